-- wrk script of bench/checkin.py: POSTs BENCH_BODY with the Authorization headers listed in BENCH_CREDENTIALS
-- (one a line), each thread rotating over all of them from its own starting point; prints one BENCH_JSON line.
local credentials = {}
local index = 0
local body = nil

function init(args)
  for line in io.lines(os.getenv("BENCH_CREDENTIALS")) do
    credentials[#credentials + 1] = line
  end
  body = os.getenv("BENCH_BODY")
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
  index = math.random(#credentials)
end

function request()
  index = index % #credentials + 1
  local headers = { ["Authorization"] = credentials[index], ["Content-Type"] = "application/json" }
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"non_2xx":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, errors.status, errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
