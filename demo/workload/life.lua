-- Conway's game of life on a torus, with 2-D arrays of rows, plus a
-- string-keyed memo of seen generations (hashing, table churn).
local size = tonumber(arg and arg[1]) or 128
local steps = tonumber(arg and arg[2]) or 140

local seed = 2024
local function rand(n)
  seed = seed * 6364136223846793005 + 1442695040888963407 -- wraps around (64-bit)
  return (seed >> 33) % n
end

local grid = {}
for y = 1, size do
  local row = {}
  for x = 1, size do row[x] = rand(4) == 0 and 1 or 0 end
  grid[y] = row
end

local function step(g)
  local new = {}
  for y = 1, size do
    local up, row, down = g[(y - 2) % size + 1], g[y], g[y % size + 1]
    local out = {}
    for x = 1, size do
      local l, r = (x - 2) % size + 1, x % size + 1
      local n = up[l] + up[x] + up[r] + row[l] + row[r] + down[l] + down[x] + down[r]
      if n == 3 or (n == 2 and row[x] == 1) then out[x] = 1 else out[x] = 0 end
    end
    new[y] = out
  end
  return new
end

local seen, alive = {}, 0
for s = 1, steps do
  grid = step(grid)
  local parts = {}
  for y = 1, size do parts[y] = table.concat(grid[y]) end
  local key = table.concat(parts, "/")
  seen[key] = (seen[key] or 0) + 1
end
for y = 1, size do for x = 1, size do alive = alive + grid[y][x] end end
local distinct = 0
for _ in pairs(seen) do distinct = distinct + 1 end
print("life", size, steps, alive, distinct)
