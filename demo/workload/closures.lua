-- Closures, coroutines and metatables: generator pipelines, a
-- producer/consumer, vector objects with operators, and an event emitter.
local N = tonumber(arg and arg[1]) or 300000

-- closures: counters and composed functions
local function counter(step)
  local c = 0
  return function() c = c + step; return c end
end
local function compose(f, g) return function(x) return f(g(x)) end end
local inc, dbl = function(x) return x + 1 end, function(x) return x * 2 end
local f = compose(inc, compose(dbl, inc))
local acc, counters = 0, {}
for i = 1, 50 do counters[i] = counter(i) end
for i = 1, N do acc = (acc + f(i) + counters[1 + i % 50]()) % 1000000007 end

-- coroutine generators chained into a pipeline
local function gen(n)
  return coroutine.wrap(function() for i = 1, n do coroutine.yield(i) end end)
end
local function filter(pred, src)
  return coroutine.wrap(function()
    for v in src do if pred(v) then coroutine.yield(v) end end
  end)
end
local function map(fn, src)
  return coroutine.wrap(function() for v in src do coroutine.yield(fn(v)) end end)
end
local psum = 0
for v in map(function(x) return x * x % 1000 end, filter(function(x) return x % 3 ~= 0 end, gen(N * 2))) do
  psum = psum + v
end

-- producer/consumer with resume/yield passing values both ways
local consumer = coroutine.create(function(first)
  local total, v = 0, first
  while v do total = total + v; v = coroutine.yield(total) end
  return total
end)
local last
for i = 1, N do last = select(2, coroutine.resume(consumer, i)) end

-- metatables: a small vector class
local Vec = {}
Vec.__index = Vec
function Vec.new(x, y) return setmetatable({ x = x, y = y }, Vec) end
function Vec.__add(a, b) return Vec.new(a.x + b.x, a.y + b.y) end
function Vec.__mul(a, s) return Vec.new(a.x * s, a.y * s) end
function Vec.__eq(a, b) return a.x == b.x and a.y == b.y end
function Vec.__tostring(v) return string.format("(%g,%g)", v.x, v.y) end
function Vec:len2() return self.x * self.x + self.y * self.y end
local pos, vel = Vec.new(0, 0), Vec.new(1, 0.5)
for i = 1, N do
  pos = pos + vel * 0.5
  if pos:len2() > 1e6 then pos = Vec.new(0, 0) end
end

-- event emitter: handlers in tables of closures
local handlers, fired = {}, 0
local function on(ev, fn) handlers[ev] = handlers[ev] or {}; table.insert(handlers[ev], fn) end
local function emit(ev, ...) for _, h in ipairs(handlers[ev] or {}) do h(...) end end
for i = 1, 20 do on("tick", function(x) fired = fired + x % i end) end
for i = 1, N // 4 do emit("tick", i) end

print("closures", acc, psum, last, tostring(pos), fired)
