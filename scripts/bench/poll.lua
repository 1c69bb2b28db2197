-- wrk script: GET a sync's status, rotating over the paths listed (one per
-- line) in $BENCH_PATHS, with the API key in $BENCH_KEY. done() prints one
-- JSON line (prefix BENCHJSON) that scripts/bench/bench.py parses.
local paths = {}
local headers = { ["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "") }
local i = 0

function init(args)
  for line in io.lines(os.getenv("BENCH_PATHS")) do
    if #line > 0 then paths[#paths + 1] = line end
  end
  i = math.random(#paths)
end

function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i], headers)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
