-- Function calls and arithmetic: naive recursive fib, tak, memoized fib with
-- big-ish integers, float loops (mandelbrot rows) and a prime sieve.
local n = tonumber(arg and arg[1]) or 33

local function fib(k)
  if k < 2 then return k end
  return fib(k - 1) + fib(k - 2)
end

local function tak(x, y, z)
  if y >= x then return z end
  return tak(tak(x - 1, y, z), tak(y - 1, z, x), tak(z - 1, x, y))
end

local memo = {}
local function mfib(k)
  if k < 2 then return k end
  local v = memo[k]
  if v then return v end
  v = (mfib(k - 1) + mfib(k - 2)) % 1000000007
  memo[k] = v
  return v
end

local function mandel(size)
  local inside = 0
  for y = 0, size - 1 do
    local ci = 2.0 * y / size - 1.0
    for x = 0, size - 1 do
      local cr = 2.0 * x / size - 1.5
      local zr, zi, i = 0.0, 0.0, 0
      while i < 50 and zr * zr + zi * zi < 4.0 do
        zr, zi = zr * zr - zi * zi + cr, 2.0 * zr * zi + ci
        i = i + 1
      end
      if i == 50 then inside = inside + 1 end
    end
  end
  return inside
end

local function sieve(limit)
  local composite, count = {}, 0
  for i = 2, limit do
    if not composite[i] then
      count = count + 1
      for j = i * i, limit, i do composite[j] = true end
    end
  end
  return count
end

print("fib", fib(n), tak(18, 12, 6), mfib(5000), mandel(160), sieve(400000))
