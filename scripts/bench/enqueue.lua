-- wrk script: POST /v1/{org}/{repo}/upstream/syncs, rotating over the paths
-- in $BENCH_PATHS (one repository each). Every request carries ref globs
-- unique to this run, thread and request, so no two requests are "the same
-- sync" and the SYNC_ALREADY_QUEUED rule never applies.
local paths = {}
local nthreads = 0
local headers = {
  ["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or ""),
  ["Content-Type"] = "application/json",
}
local run = os.getenv("BENCH_RUN") or "r"
local i = 0
local n = 0

function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
end

function init(args)
  for line in io.lines(os.getenv("BENCH_PATHS")) do
    if #line > 0 then paths[#paths + 1] = line end
  end
  i = math.random(#paths)
end

function request()
  i = i % #paths + 1
  n = n + 1
  local body = string.format('{"direction":"pull","ref_globs":{"branches":"bench-%s-%d-%d"}}', run, tid, n)
  return wrk.format("POST", paths[i], headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
