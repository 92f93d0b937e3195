-- A small JSON serializer and parser: nested documents are encoded (with
-- sorted keys and escapes), decoded again and compared.
local N = tonumber(arg and arg[1]) or 800

local seed = 7
local function rand(n)
  seed = seed * 6364136223846793005 + 1442695040888963407 -- wraps around (64-bit)
  return (seed >> 33) % n
end

local escapes = { ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\t'] = '\\t' }
local function encode(v, out)
  local t = type(v)
  if t == "table" then
    if #v > 0 or next(v) == nil then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then out[#out + 1] = "," end
        encode(v[i], out)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do keys[#keys + 1] = k end
      table.sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        encode(k, out)
        out[#out + 1] = ":"
        encode(v[k], out)
      end
      out[#out + 1] = "}"
    end
  elseif t == "string" then
    out[#out + 1] = '"' .. v:gsub('[%c"\\]', escapes) .. '"'
  elseif t == "number" then
    out[#out + 1] = math.type(v) == "integer" and tostring(v) or string.format("%.14g", v)
  else
    out[#out + 1] = tostring(v)
  end
  return out
end

local decode
local function skip(s, i) return s:find("[^ \n\t]", i) or #s + 1 end
local unescapes = { ['"'] = '"', ['\\'] = '\\', n = '\n', t = '\t' }
local function decode_string(s, i)
  local buf, j = {}, i + 1
  while true do
    local c = s:sub(j, j)
    if c == '"' then return table.concat(buf), j + 1 end
    if c == "\\" then
      buf[#buf + 1] = unescapes[s:sub(j + 1, j + 1)]
      j = j + 2
    else
      local k = s:find('["\\]', j)
      buf[#buf + 1] = s:sub(j, k - 1)
      j = k
    end
  end
end
function decode(s, i)
  i = skip(s, i)
  local c = s:sub(i, i)
  if c == "{" then
    local obj = {}
    i = skip(s, i + 1)
    if s:sub(i, i) == "}" then return obj, i + 1 end
    while true do
      local k
      k, i = decode_string(s, skip(s, i))
      i = skip(s, i) + 1 -- ':'
      obj[k], i = decode(s, i)
      i = skip(s, i)
      local d = s:sub(i, i)
      i = i + 1
      if d == "}" then return obj, i end
    end
  elseif c == "[" then
    local arr = {}
    i = skip(s, i + 1)
    if s:sub(i, i) == "]" then return arr, i + 1 end
    while true do
      arr[#arr + 1], i = decode(s, i)
      i = skip(s, i)
      local d = s:sub(i, i)
      i = i + 1
      if d == "]" then return arr, i end
    end
  elseif c == '"' then
    return decode_string(s, i)
  elseif s:find("^true", i) then return true, i + 4
  elseif s:find("^false", i) then return false, i + 5
  elseif s:find("^null", i) then return nil, i + 4
  else
    local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", i)
    return math.tointeger(tonumber(num)) or tonumber(num), i + #num
  end
end

local function make(depth)
  if depth == 0 then
    local r = rand(4)
    if r == 0 then return rand(100000) end
    if r == 1 then return rand(1000) / 8 end
    if r == 2 then return rand(2) == 1 end
    return "s\t" .. rand(1000) .. '"q"\n'
  end
  if rand(2) == 0 then
    local a = {}
    for i = 1, 1 + rand(5) do a[i] = make(depth - 1) end
    return a
  end
  local o = {}
  for i = 1, 1 + rand(5) do o["k" .. rand(50)] = make(depth - 1) end
  return o
end

local bytes, same, chk = 0, 0, 0
for i = 1, N do
  local doc = make(4)
  local text = table.concat(encode(doc, {}))
  local back = decode(text, 1)
  local again = table.concat(encode(back, {}))
  bytes = bytes + #text
  if again == text then same = same + 1 end
  for j = 1, #text, 13 do chk = (chk * 7 + text:byte(j)) % 1000000007 end
end
print("json", N, bytes, same, chk)
