-- scalekit.mq, Redis Streams backend: redrive
-- Runs after mq_prelude.lua (the shared helpers), loaded by scalekit.mq._redis._scripts.
-- KEYS: base, dead letters' base. ARGV: at most how many, visibility timeout ms,
-- maxsize (0: none), operation id.
-- Moves dead letters that wait (not those in flight) back, by priority level, in
-- the order they were dead-lettered, then delayed ones; returns how many moved.
-- A bounded queue takes at most the room it has (maxsize less what it holds,
-- counted as mq_put.lua counts it); the rest stay dead letters.
local base, dlq = KEYS[1], KEYS[2]
local limit, vt, maxsize, op = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local done = replayed(base, op)
if done then return done end
if maxsize > 0 then
  local size = redis.call('ZCARD', base .. ':delayed')
  for _, lvl in ipairs(redis.call('ZRANGE', base .. ':levels', 0, -1)) do
    size = size + redis.call('XLEN', skey(base, lvl))
  end
  limit = math.max(0, math.min(limit, maxsize - size))
end
local now = now_ms()
local moved = 0
local function back(lvl, fields)
  ensure_level(base, lvl)
  redis.call('XADD', skey(base, lvl), '*', unpack(rebuild(fields, DROP_DEAD, {})))
  moved = moved + 1
end
for _, lvl in ipairs(redis.call('ZREVRANGE', dlq .. ':levels', 0, -1)) do
  if moved >= limit then break end
  local s = skey(dlq, lvl)
  for _, e in ipairs(reclaimable(s, vt)) do
    if moved >= limit then break end
    if not extended(dlq, lvl, e[1], now) then
      local entry = redis.call('XRANGE', s, e[1], e[1])[1]
      if entry then back(lvl, entry[2]) end
      remove(dlq, lvl, e[1])
    end
  end
  if moved < limit then
    local got = redis.call('XREADGROUP', 'GROUP', G, '~redrive', 'COUNT', limit - moved,
      'STREAMS', s, '>')
    if got then
      for _, e in ipairs(got[1][2]) do
        back(lvl, e[2])
        remove(dlq, lvl, e[1])
      end
    end
    redis.call('XGROUP', 'DELCONSUMER', s, G, '~redrive')
  end
  tidy(dlq, lvl)
end
if moved < limit then
  local dk = dlq .. ':delayed'
  local waiting = redis.call('ZRANGE', dk, 0, limit - moved - 1)
  for _, m in ipairs(waiting) do
    local t = cmsgpack.unpack(m)
    back(t[1], {unpack(t, 2)})
  end
  if #waiting > 0 then redis.call('ZREM', dk, unpack(waiting)) end
end
signal(base, moved, 'p')
if moved > 0 then room(dlq) end
return record(base, op, moved)
