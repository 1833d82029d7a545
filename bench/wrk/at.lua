-- GET /api/v1/deployments?environment=&app=&at=: what ran of one app at one time, for a random
-- app of the bulk-loaded million deployments (bench/serve.sh's PostgreSQL part: environments
-- env-0..env-9, apps app-0..app-999, one deployment a minute from 2021-01-01).
math.randomseed(os.time())
request = function()
  local env = math.random(0, 9)
  local app = math.random(0, 999)
  local t = os.time({year = 2021, month = 1, day = 1, hour = 0}) + math.random(0, 1000000) * 60
  local path = string.format("/api/v1/deployments?environment=env-%d&app=app-%d&at=%s",
    env, app, os.date("!%Y-%m-%dT%H:%M:%SZ", t))
  return wrk.format("GET", path)
end
