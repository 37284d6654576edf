-- scalekit.mq, Redis Streams backend: cleanup
-- Runs after mq_prelude.lua (the shared helpers), loaded by scalekit.mq._redis._scripts.
-- KEYS: base. ARGV: consumer, idle ms. Deletes `me` and every consumer idle for
-- longer than idle ms, from every group of the queue, if it holds no entry (a
-- consumer is created again by its next read; one with entries is kept, since
-- deleting it would orphan them).
local base, me, idle = KEYS[1], ARGV[1], tonumber(ARGV[2])
local removed = 0
local function sweep(s)
  if redis.call('EXISTS', s) == 0 then return end
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', s, G)) do
    local info = {}
    for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
    if info['pending'] == 0 and (info['name'] == me or info['idle'] > idle) then
      redis.call('XGROUP', 'DELCONSUMER', s, G, info['name'])
      removed = removed + 1
    end
  end
end
for _, lvl in ipairs(redis.call('ZRANGE', base .. ':levels', 0, -1)) do sweep(skey(base, lvl)) end
sweep(base .. ':signal')
return removed
