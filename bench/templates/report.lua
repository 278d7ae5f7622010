-- wrk script: prints one machine-readable line at the end of a run (latencies in microseconds).
-- Defines no request()/response() hook, so wrk's hot path is unchanged.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

-- Completed requests slower than limit_us. wrk keeps its latencies in a histogram that Lua can
-- only reach through percentile(p), whose rank is round(p / 100 * n + 0.5): binary-search the
-- highest rank whose latency is at most the limit (about 20 calls for a million requests).
-- n is wrk's completed requests; a response slower than --timeout is counted as a timeout
-- error, not in the histogram, so with timeouts the count is off by at most their number.
local function count_over(latency, limit_us, n)
  if n == 0 or latency.max <= limit_us then
    return 0
  end
  local lo, hi = 0, n -- the latency at rank lo is <= limit (rank 0: none), at rank hi above it
  while hi - lo > 1 do
    local mid = math.floor((lo + hi) / 2)
    if latency:percentile((mid - 0.25) * 100 / n) <= limit_us then
      lo = mid
    else
      hi = mid
    end
  end
  return n - lo
end

function done(summary, latency, requests)
  local late = 0
  for _, t in ipairs(threads) do
    late = late + (t:get("late") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "p999": %d, "max": %d, "mean": %.1f}, ' ..
    '"late": %d, "over_1s": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean, late,
    count_over(latency, 1000000, summary.requests)))
end
