-- A server loop for benchmarks/live_runtime.py: serves ITEMS work items (arg 1; default 600), each
-- one run of a demo/workload script (folder: arg 2) at a small size, in a fixed order, so a run is
-- deterministic. The scripts' prints are folded into one checksum, printed at the end.
local items = tonumber(arg and arg[1]) or 600
local folder = (arg and arg[2]) or "."
local jobs = {
  { "closures.lua", { "20000" } }, { "fib.lua", { "22" } }, { "json.lua", { "60" } },
  { "life.lua", { "40", "20" } }, { "sort.lua", { "4000" } }, { "strings.lua", { "4000" } },
}
local chunks = {}
for i, job in ipairs(jobs) do chunks[i] = assert(loadfile(folder .. "/" .. job[1])) end
local sum, served = 0, 0
local real_print = print
print = function(...)
  local parts = table.pack(...)
  for i = 1, parts.n do parts[i] = tostring(parts[i]) end
  local line = table.concat(parts, "\t", 1, parts.n)
  for i = 1, #line do sum = (sum * 31 + line:byte(i)) % 4294967296 end
end
for item = 1, items do
  local k = (item - 1) % #jobs + 1
  arg = { [0] = jobs[k][1], table.unpack(jobs[k][2]) }
  chunks[k]()
  served = served + 1
end
print = real_print
print("served", served, sum)
