-- wrk script of bench/deploy/run: `wrk ... -s versions.lua URL -- VERSION`.
-- Per response: status 200 bodies are sorted by their `version=` into VERSION or other;
-- keeps the wall-clock time (CLOCK_REALTIME, via LuaJIT's ffi) of the last response from
-- another version, and prints after wrk's summary:
--   BENCH last_other=<unix s> new=<n> other=<n> non200=<n> others=<v1,v2,...>
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local tsbuf = ffi.new("bench_timespec")
local function now()
    ffi.C.clock_gettime(0, tsbuf)
    return tonumber(tsbuf.tv_sec) + tonumber(tsbuf.tv_nsec) / 1e9
end

local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    version = args[1] or ""
    last_other = 0
    n_new = 0
    n_other = 0
    n_non200 = 0
    others = ""
end

function response(status, headers, body)
    if status ~= 200 then
        n_non200 = n_non200 + 1
        return
    end
    local v = body:match("version=(%S*)") or "?"
    if v == version then
        n_new = n_new + 1
    else
        n_other = n_other + 1
        last_other = now()
        if not string.find("," .. others .. ",", "," .. v .. ",", 1, true) then
            others = (others == "") and v or (others .. "," .. v)
        end
    end
end

function done(summary, latency, requests)
    local last, nn, no, nb, seen = 0, 0, 0, 0, {}
    for _, t in ipairs(threads) do
        last = math.max(last, t:get("last_other"))
        nn = nn + t:get("n_new")
        no = no + t:get("n_other")
        nb = nb + t:get("n_non200")
        local o = t:get("others")
        if o ~= "" then table.insert(seen, o) end
    end
    io.write(string.format("BENCH last_other=%.6f new=%d other=%d non200=%d others=%s\n",
        last, nn, no, nb, table.concat(seen, ",")))
end
