-- ingest.lua: unique CloudEvents POSTed to /v1/events by wrk, one per request or a batch of them;
-- `id` is set per thread by setup(). Used by scripts/perf/bench's wrk scenarios.
-- Env: WRK_BATCH (events per request, default 1), RUN_TAG (in every event's source),
--      WARREN_INGEST_KEY, WRK_SHAPE, WRK_RATE and WRK_THREADS (below).
local counter = 0
local batch = tonumber(os.getenv("WRK_BATCH") or "1")
local tag = os.getenv("RUN_TAG")
local headers = {["Content-Type"] = batch == 1 and "application/cloudevents+json"
                                   or "application/cloudevents-batch+json"}
local key = os.getenv("WARREN_INGEST_KEY")
if key and key ~= "" then headers["Authorization"] = "Bearer " .. key end
-- WRK_SHAPE=k6: the events of loadtest/lib.js (four types, a subject, three data fields), so a
-- paced run carries what the k6 batch scenario does; otherwise one type and no subject.
local k6_shape = os.getenv("WRK_SHAPE") == "k6"
local types = {"page.viewed", "page.left", "cart.updated", "order.placed"}
-- WRK_RATE: requests/s over all threads (WRK_THREADS of them), paced; unset: a closed loop.
local rate = tonumber(os.getenv("WRK_RATE") or "0")
local interval_ms = rate > 0 and 1000 * tonumber(os.getenv("WRK_THREADS")) / rate or 0
local ffi, next_due
if rate > 0 then
  ffi = require("ffi")
  ffi.cdef[[
    typedef struct { long tv_sec; long tv_nsec; } warren_timespec;
    int clock_gettime(int clock, warren_timespec *now);
  ]]
end
local function now_ms()
  local now = ffi.new("warren_timespec")
  ffi.C.clock_gettime(1, now) -- CLOCK_MONOTONIC
  return tonumber(now.tv_sec) * 1000 + tonumber(now.tv_nsec) / 1e6
end
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
-- Each request takes the thread's next slot on a fixed schedule: a constant arrival rate while
-- connections are free, and a catch-up (no wait) when the answers fall behind it. Defined only
-- when paced: wrk sends every request of a script that has `delay` through a timer, even a wait
-- of 0 (two more `epoll_ctl` calls and a turn of its event loop), so a closed loop has none.
if rate > 0 then
  function delay()
    local now = now_ms()
    next_due = next_due or now
    local wait = next_due - now
    next_due = next_due + interval_ms
    return wait > 0 and wait or 0
  end
end
request = function()
  local events = {}
  for i = 1, batch do
    counter = counter + 1
    if k6_shape then
      events[i] = string.format(
        '{"specversion":"1.0","id":"%d-%d","source":"/wrk/%s","type":"%s","subject":"user/%d",' ..
        '"data":{"n":%d,"path":"/p/%d","run":"%s"}}',
        id, counter, tag, types[counter % 4 + 1], (id * 7919 + counter) % 10000, counter, counter % 97, tag)
    else
      events[i] = string.format(
        '{"specversion":"1.0","id":"%d-%d","source":"/wrk/%s","type":"bench.wrk","data":{"n":%d}}',
        id, counter, tag, counter)
    end
  end
  local body = batch == 1 and events[1] or ("[" .. table.concat(events, ",") .. "]")
  return wrk.format("POST", "/v1/events", headers, body)
end
