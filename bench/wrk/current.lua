-- GET /api/v1/deployments?environment=&app=&at=<far future>: what runs of one app now (its
-- newest deployment), for a random app of the bulk-loaded million deployments.
math.randomseed(os.time() + 1)
request = function()
  local path = string.format("/api/v1/deployments?environment=env-%d&app=app-%d&at=2999-01-01T00:00:00Z",
    math.random(0, 9), math.random(0, 999))
  return wrk.format("GET", path)
end
