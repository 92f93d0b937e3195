-- A Lua service for the demo: it serves work items and never exits. Each line on stdin is one
-- item, a run of one of demo/workload's scripts at a small size, in turn; it waits (blocked in
-- io.read, costing nothing) for the next. Its profile reaches pgod while it runs through the
-- live object the profiling build is linked with (stdenv-adapters/live/pgod-live.c).
local folder = (arg and arg[1]) or "."
local jobs = {
  { "closures.lua", { "20000" } }, { "fib.lua", { "22" } }, { "json.lua", { "60" } },
  { "life.lua", { "40", "20" } }, { "sort.lua", { "4000" } }, { "strings.lua", { "4000" } },
}
local chunks = {}
for i, job in ipairs(jobs) do chunks[i] = assert(loadfile(folder .. "/" .. job[1])) end
local real_print, served = print, 0
print = function() end -- the scripts' output is nobody's here
while io.read("l") do
  local k = served % #jobs + 1
  arg = { [0] = jobs[k][1], table.unpack(jobs[k][2]) }
  chunks[k]()
  served = served + 1
end
print = real_print -- stdin closed: never, for a service; a demo that ends kills it
