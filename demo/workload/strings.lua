-- String building, formatting and pattern matching: a log file is generated,
-- parsed with gmatch/match, rewritten with gsub, and summarized.
local N = tonumber(arg and arg[1]) or 50000

local seed = 12345
local function rand(n)
  seed = seed * 6364136223846793005 + 1442695040888963407 -- wraps around (64-bit)
  return (seed >> 33) % n
end

local levels = { "INFO", "WARN", "ERROR", "DEBUG" }
local words = { "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta" }

-- 1. build a log with table.concat and string.format
local lines = {}
for i = 1, N do
  local msg = {}
  for j = 1, 1 + rand(6) do msg[j] = words[1 + rand(#words)] end
  lines[i] = string.format("2024-01-%02d %02d:%02d:%02d [%s] user=%d %s (%d ms)",
    1 + rand(28), rand(24), rand(60), rand(60), levels[1 + rand(4)], rand(1000),
    table.concat(msg, " "), rand(5000))
end
local log = table.concat(lines, "\n")

-- 2. parse it back
local per_level, total_ms, users = {}, 0, {}
for day, level, user, text, ms in log:gmatch("2024%-01%-(%d+) [%d:]+ %[(%u+)%] user=(%d+) ([%l ]+) %((%d+) ms%)") do
  per_level[level] = (per_level[level] or 0) + 1
  total_ms = total_ms + tonumber(ms)
  users[user] = true
end
local nusers = 0
for _ in pairs(users) do nusers = nusers + 1 end

-- 3. rewrite with gsub: capitalize words, mask numbers, count replacements
local masked, nmask = log:gsub("user=%d+", "user=***")
local caps = masked:gsub("(%a)(%a*)", function(a, b) return a:upper() .. b end)
local _, nerr = caps:gsub("%[ERROR%]", "")

-- 4. find/sub/rep/byte/char
local hits, pos = 0, 1
while true do
  local s, e = string.find(log, "gamma delta", pos, true)
  if not s then break end
  hits = hits + 1
  pos = e + 1
end
local sum = 0
for i = 1, #caps, 7 do sum = (sum + caps:byte(i)) % 1000000007 end
local rev = {}
for i = 1, 2000 do rev[i] = string.char(65 + (i % 26)):rep(1 + i % 5):reverse() end

print("strings", #log, per_level.INFO, per_level.WARN, per_level.ERROR, per_level.DEBUG,
  total_ms, nusers, nmask, nerr, hits, sum, #table.concat(rev))
