-- POST /api/v1/deployments with the Atomist body: 16 apps in each of BENCH_ENVS environments
-- (default 1; 8 gives 128 (environment, app) pairs, each request the next pair), a new digest
-- on every request (each one is a real deployment: a history append
-- and a deploy-info.yml replace). BENCH_IDEMPOTENCY=1: each request also carries an
-- Idempotency-Key of its own (the server keeps it with the deployment).
local n = 0
local envs = tonumber(os.getenv("BENCH_ENVS") or "1")
local keyed = os.getenv("BENCH_IDEMPOTENCY") == "1"
local counter = 0
setup = function(thread)
  counter = counter + 1
  thread:set("tid", counter)
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "bench-key")
request = function()
  n = n + 1
  local body = string.format(
    '{"environment":{"name":"bench-%d"},"image":{"url":"registry.example.com/team/app-%d@sha256:%032x%032x"}}',
    math.floor(n / 16) % envs, n % 16, tid or 0, n)
  local headers = nil
  if keyed then
    headers = {}
    for k, v in pairs(wrk.headers) do headers[k] = v end
    headers["Idempotency-Key"] = string.format("bench-%d-%d", tid or 0, n)
  end
  return wrk.format(nil, "/api/v1/deployments", headers, body)
end
