-- POST /api/v1/register as the scanner sends it. The git-sha cycles through 1000 commits, so
-- the server sees both first registrations and repeats (and its index stays bounded, as a real
-- fleet's would for a time window).
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  local body = string.format(
    '{"git-url":"https://github.com/example/app","git-sha":"%07x","email-ids":"dev@example.com",' ..
    '"image-name":"registry.example.com/team/app:1","image-id":"sha256:0123","image-digest":null,' ..
    '"labels":{"org.opencontainers.image.created":"2026-01-24T22:41:03Z"}}', n % 1000)
  return wrk.format(nil, "/api/v1/register", nil, body)
end
