-- Tables: records sorted with comparators, sorted insertion, binary search,
-- removal, and a heap-based priority queue.
local N = tonumber(arg and arg[1]) or 55000

local seed = 42
local function rand(n)
  seed = seed * 6364136223846793005 + 1442695040888963407 -- wraps around (64-bit)
  return (seed >> 33) % n
end

-- records sorted by several keys
local people = {}
for i = 1, N do
  people[i] = { id = i, age = rand(90), score = rand(100000) / 7, name = "p" .. rand(5000) }
end
table.sort(people, function(a, b)
  if a.age ~= b.age then return a.age < b.age end
  if a.name ~= b.name then return a.name < b.name end
  return a.id < b.id
end)
local check = 0
for i = 1, #people, 97 do check = (check * 31 + people[i].id) % 1000000007 end

-- numbers: sort, then keep a sorted array by binary-search insertion
local nums = {}
for i = 1, N do nums[i] = rand(1000000) end
table.sort(nums)
local sorted = {}
local function bsearch(t, x)
  local lo, hi = 1, #t + 1
  while lo < hi do
    local mid = (lo + hi) // 2
    if t[mid] < x then lo = mid + 1 else hi = mid end
  end
  return lo
end
for i = 1, N // 8 do
  local x = rand(1000000)
  table.insert(sorted, bsearch(sorted, x), x)
end
local found = 0
for i = 1, N do
  local x = nums[i]
  local p = bsearch(sorted, x)
  if sorted[p] == x then found = found + 1 end
end
for i = 1, #sorted // 4 do table.remove(sorted, 1 + rand(#sorted)) end

-- binary heap
local heap = {}
local function push(x)
  heap[#heap + 1] = x
  local i = #heap
  while i > 1 do
    local p = i // 2
    if heap[p] <= heap[i] then break end
    heap[p], heap[i] = heap[i], heap[p]
    i = p
  end
end
local function pop()
  local top, n = heap[1], #heap
  heap[1] = heap[n]; heap[n] = nil; n = n - 1
  local i = 1
  while true do
    local l, r, m = 2 * i, 2 * i + 1, i
    if l <= n and heap[l] < heap[m] then m = l end
    if r <= n and heap[r] < heap[m] then m = r end
    if m == i then break end
    heap[m], heap[i] = heap[i], heap[m]
    i = m
  end
  return top
end
for i = 1, N do push(rand(1000000)) end
local last, ordered, hsum = -1, true, 0
for i = 1, N do
  local x = pop()
  if x < last then ordered = false end
  last = x
  hsum = (hsum + x) % 1000000007
end

print("sort", check, nums[1], nums[N], found, #sorted, ordered, hsum)
