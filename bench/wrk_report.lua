-- wrk script for bench/run.py: the request comes from the environment (so a bearer token
-- never shows in a process list), and the summary is printed as one JSON line.

wrk.method = os.getenv("BENCH_METHOD") or "GET"
local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization then
  wrk.headers["Authorization"] = authorization
end
local body = os.getenv("BENCH_BODY")
if body then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

-- With BENCH_RECONNECT_EVERY=N, every Nth request asks the server to close its connection,
-- and wrk opens a new one. With `uvicorn --workers`, the worker that is free first accepts
-- it, so connections spread over the workers as clients come and go. Without this, the one
-- worker that wakes first accepts all the connections wrk opens at once, and keeps them.
local reconnect_every = tonumber(os.getenv("BENCH_RECONNECT_EVERY") or "")
if reconnect_every then
  local keep_alive, closing, sent
  init = function()
    keep_alive = wrk.format()
    local headers = {Connection = "close"}
    for name, value in pairs(wrk.headers) do
      headers[name] = value
    end
    closing = wrk.format(nil, nil, headers)
    sent = 0
  end
  request = function()
    sent = sent + 1
    return sent % reconnect_every == 0 and closing or keep_alive
  end
end

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, '
      .. '"timeouts": %d, "p50_us": %.0f, "p99_us": %.0f, "max_us": %.0f}\n',
    summary.requests, summary.duration, errors.status,
    errors.connect + errors.read + errors.write, errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max
  ))
end
