-- queries.lua: GET /v1/events with one filter shape, paced, for wrk: the read path of
-- loadtest/queries.js with a generator light enough to leave the cores to Warren. Run one wrk per
-- shape so each shape gets its own latency figures (scripts/perf/bench --scenarios wrk-queries).
-- The filters pick what scripts/perf/prefill writes: 10 families of types with .v1-.v4 variants,
-- 1 000 sources, 100 000 subjects, 30 days.
-- Env: WRK_KIND (type, type_prefix, source, subject, window or type_window), WRK_RATE (requests/s
--      over all threads), WRK_THREADS, WARREN_READ_KEY.
-- Prints one line, `RESULT kind=... requests=... p50=... p99=... max=... late=... behind_max_ms=...
-- errors=...` (milliseconds): `late` counts requests sent after their slot in the schedule (the
-- connections were all waiting for answers), so latencies that would hide a backlog show.
local kind = os.getenv("WRK_KIND")
local key = os.getenv("WARREN_READ_KEY")
local headers = {}
if key and key ~= "" then headers["Authorization"] = "Bearer " .. key end
local rate = tonumber(os.getenv("WRK_RATE") or "0")
if rate <= 0 then error("WRK_RATE: requests per second, above 0") end
local interval_ms = 1000 * tonumber(os.getenv("WRK_THREADS") or "1") / rate

local ffi = require("ffi")
ffi.cdef[[
  typedef struct { long tv_sec; long tv_nsec; } warren_timespec;
  int clock_gettime(int clock, warren_timespec *now);
]]
local function now_ms()
  local now = ffi.new("warren_timespec")
  ffi.C.clock_gettime(1, now) -- CLOCK_MONOTONIC
  return tonumber(now.tv_sec) * 1000 + tonumber(now.tv_nsec) / 1e6
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  math.randomseed(os.time() * 1000 + id)
end

-- Per thread (read by done() through thread:get): requests sent behind schedule, and by how much.
late = 0
behind_max = 0
local next_due
function delay()
  local now = now_ms()
  next_due = next_due or now
  local wait = next_due - now
  next_due = next_due + interval_ms
  if wait < 0 then
    late = late + 1
    if -wait > behind_max then behind_max = -wait end
    return 0
  end
  return wait
end

local families = {"page.viewed", "page.left", "page.scrolled", "order.placed", "order.paid",
  "cart.viewed", "cart.updated", "user.signed_up", "user.logged_in", "search.done"}
local variants = {"", ".v1", ".v2", ".v3", ".v4"}
local prefixes = {"page", "order", "cart", "user", "search"}
local function pick(items) return items[math.random(#items)] end
local function variant() return pick(families) .. pick(variants) end
-- One day ending 0 to 28 whole days ago.
local function window()
  local until_s = os.time() - math.random(0, 28) * 86400
  return "since=" .. os.date("!%Y-%m-%dT%H:%M:%SZ", until_s - 86400) ..
    "&until=" .. os.date("!%Y-%m-%dT%H:%M:%SZ", until_s)
end
local filters = {
  type = function() return "type=" .. variant() end,
  type_prefix = function() return "type=" .. pick(prefixes) .. ".*" end,
  source = function() return "source=https%3A%2F%2Fapp" .. math.random(0, 999) .. ".example%2Fweb" end,
  subject = function() return "subject=user%2F" .. math.random(0, 99999) end,
  window = window,
  type_window = function() return "type=" .. variant() .. "&" .. window() end,
}
local filter = filters[kind]
if not filter then error("WRK_KIND: one of type, type_prefix, source, subject, window, type_window") end

request = function()
  return wrk.format("GET", "/v1/events?" .. filter() .. "&limit=50", headers)
end

function done(summary, latency, requests)
  local sent_late, behind = 0, 0
  for _, thread in ipairs(threads) do
    sent_late = sent_late + (thread:get("late") or 0)
    behind = math.max(behind, thread:get("behind_max") or 0)
  end
  local errors = summary.errors
  io.write(string.format(
    "RESULT kind=%s requests=%d p50=%.2f p99=%.2f max=%.2f late=%d behind_max_ms=%.1f errors=%d\n",
    kind, summary.requests, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, sent_late, behind,
    errors.status + errors.connect + errors.read + errors.write + errors.timeout))
end
