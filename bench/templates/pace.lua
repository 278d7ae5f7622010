-- wrk pacing: requests leave on a fixed schedule (one slot every 1/rate s, shared by all of the
-- thread's connections) instead of as fast as responses come back. delay() runs before each
-- request of a connection; it claims the next slot and waits until it. wrk's timers have 1 ms
-- granularity, so single sends may leave up to 1 ms early or late, but the schedule, and so
-- the average rate, is exact while the server keeps up. A slot claimed more than 1 ms in the
-- past counts as "late": the server (or this machine) did not keep up, and the run says so.
-- wrk passes the rate per thread as the first script argument.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("bench_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local interval_ms = nil
local next_slot = nil
late = 0

function init(args)
  local rate = tonumber(args[1])
  if rate == nil or rate <= 0 then
    error("pace.lua: the first argument must be the request rate per thread, got " .. tostring(args[1]))
  end
  interval_ms = 1000 / rate
end

function delay()
  local now = now_ms()
  if next_slot == nil then
    next_slot = now
  end
  local slot = next_slot
  next_slot = next_slot + interval_ms
  local wait = slot - now
  if wait < -1 then
    late = late + 1
  end
  if wait <= 0 then
    return 0
  end
  return math.floor(wait + 0.5)
end
