-- scalekit.mq, Redis Streams backend: purge
-- Runs after mq_prelude.lua (the shared helpers), loaded by scalekit.mq._redis._scripts.
-- KEYS: base. ARGV: visibility timeout ms, operation id. Deletes what is ready or
-- delayed (not what is in flight); returns how many.
local base, vt, op = KEYS[1], tonumber(ARGV[1]), ARGV[2]
local done = replayed(base, op)
if done then return done end
local now = now_ms()
local dk = base .. ':delayed'
local purged = redis.call('ZCARD', dk)
redis.call('DEL', dk)
for _, lvl in ipairs(redis.call('ZRANGE', base .. ':levels', 0, -1)) do
  local s = skey(base, lvl)
  local pc = redis.call('XPENDING', s, G)[1]
  if pc == 0 then
    purged = purged + redis.call('XLEN', s)
    redis.call('UNLINK', s)
    redis.call('ZREM', base .. ':levels', lvl)
    redis.call('HDEL', base .. ':cur', lvl)
  else
    for _, e in ipairs(reclaimable(s, vt)) do
      if not extended(base, lvl, e[1], now) then
        remove(base, lvl, e[1])
        purged = purged + 1
      end
    end
    while true do
      local got = redis.call('XREADGROUP', 'GROUP', G, '~purge', 'COUNT', 1000, 'STREAMS', s, '>')
      if not got then break end
      local ids = {}
      for _, e in ipairs(got[1][2]) do ids[#ids + 1] = e[1] end
      if #ids == 0 then break end
      redis.call('XACK', s, G, unpack(ids))
      redis.call('XDEL', s, unpack(ids))
      purged = purged + #ids
    end
    redis.call('XGROUP', 'DELCONSUMER', s, G, '~purge')
    tidy(base, lvl)
  end
end
room(base)
return record(base, op, purged)
