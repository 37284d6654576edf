-- scalekit.mq, Redis Streams backend: put
-- Runs after mq_prelude.lua (the shared helpers), loaded by scalekit.mq._redis._scripts.
-- KEYS: base, ids counter
-- ARGV: maxsize (0: none), dedup key hash (''), dedup window ms, k,
--       then k times: kind, data, headers JSON (''), level, delay ms; operation id
local base, ids = KEYS[1], KEYS[2]
local maxsize, dedup, window, k = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local op = ARGV[#ARGV]
local done = replayed(base, op)
if done then return done end
if dedup ~= '' then
  local seen = redis.call('GET', base .. ':d:' .. dedup)
  if seen then return {1, seen} end
end
local levels = redis.call('ZRANGE', base .. ':levels', 0, -1)
if maxsize > 0 then
  local size = redis.call('ZCARD', base .. ':delayed')
  for _, lvl in ipairs(levels) do size = size + redis.call('XLEN', skey(base, lvl)) end
  if size + k > maxsize then
    local r = base .. ':room'
    local last
    if redis.call('EXISTS', r) == 1 then
      last = redis.call('XREVRANGE', r, '+', '-', 'COUNT', 1)[1][1]
    else
      last = redis.call('XADD', r, '*', 'r', '0')
    end
    redis.call('PEXPIRE', r, 3600000)
    return {0, last}
  end
end
local known = {}
for _, lvl in ipairs(levels) do known[lvl] = true end
local first = redis.call('INCRBY', ids, k) - k + 1
local now = now_ms()
local ready = 0
for j = 0, k - 1 do
  local a = 5 + j * 5
  local fields = {'i', int(first + j), 'k', ARGV[a], 'd', ARGV[a + 1], 't', int(now)}
  if ARGV[a + 2] ~= '' then
    fields[9] = 'h'
    fields[10] = ARGV[a + 2]
  end
  local lvl, wait = ARGV[a + 3], tonumber(ARGV[a + 4])
  if wait > 0 then
    delay(base, lvl, fields, now + wait)
  else
    if not known[lvl] then
      ensure_level(base, lvl)
      known[lvl] = true
    end
    redis.call('XADD', skey(base, lvl), '*', unpack(fields))
    ready = ready + 1
  end
end
signal(base, ready, 'p')
if dedup ~= '' and window > 0 then
  redis.call('SET', base .. ':d:' .. dedup, int(first), 'PX', window)
end
return record(base, op, {2, first})
