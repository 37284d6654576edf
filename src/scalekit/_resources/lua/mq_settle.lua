-- scalekit.mq, Redis Streams backend: settle
-- Runs after mq_prelude.lua (the shared helpers), loaded by scalekit.mq._redis._scripts.
-- KEYS: base, dead letters' base (the base itself for a dead-letter queue)
-- ARGV: action, level, entry id, consumer, delivery count, then by action:
--   park                             ready again now (a nack)
--   release redelivered('1'/'0')     given back unseen (a cancelled async get)
--   delay   ms                       ready again in ms (a nack with a delay)
--   bury    reason queue attempts damaged('1'/'0')
--                                    to the dead letters
--   drop                             deleted (a reject on a dead-letter queue)
--   extend  ms visibility-timeout-ms invisible for ms from now
-- and last, the operation id.
-- Returns 1, or 0 when that delivery no longer holds the entry (1 again when run
-- again with the same operation id).
local base, dlq = KEYS[1], KEYS[2]
if dlq == base then dlq = '' end
local action, lvl, sid, me, count = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local op = ARGV[#ARGV]
if replayed(base, op) then return 1 end
local s = skey(base, lvl)
if not owns(s, sid, me, count) then return 0 end
record(base, op, 1)
local now = now_ms()
if action == 'extend' then
  local ms, vt = tonumber(ARGV[6]), tonumber(ARGV[7])
  if ms <= vt then
    redis.call('XCLAIM', s, G, me, 0, sid, 'TIME', int(now + ms - vt),
      'RETRYCOUNT', count, 'JUSTID')
    redis.call('HDEL', base .. ':ext', extkey(lvl, sid))
  else
    -- XCLAIM cannot set a delivery time in the future (Redis clamps it to now):
    -- keep the deadline aside; TAKE hands the entry back to `me` until then
    redis.call('XCLAIM', s, G, me, 0, sid, 'RETRYCOUNT', count, 'JUSTID')
    redis.call('HSET', base .. ':ext', extkey(lvl, sid),
      int(now + ms) .. ' ' .. int(count) .. ' ' .. me)
  end
  return 1
end
if action == 'park' or action == 'release' then
  local keep = count
  if action == 'release' then
    keep = count - 1
    redis.call('HINCRBY', base .. ':stats', 'delivered', -1)
    if ARGV[6] == '1' then redis.call('HINCRBY', base .. ':stats', 'redelivered', -1) end
  end
  -- TIME 0: idle since 1970, so the next XAUTOCLAIM takes it at once
  redis.call('XCLAIM', s, G, '~parked', 0, sid, 'TIME', 0, 'RETRYCOUNT', keep, 'JUSTID')
  redis.call('HDEL', base .. ':ext', extkey(lvl, sid))
  signal(base, 1, 'p')
  return 1
end
local fields = redis.call('XRANGE', s, sid, sid)[1][2]
if action == 'delay' then
  local attempts = tonumber(field(fields, 'n') or '0') + count
  remove(base, lvl, sid)
  delay(base, lvl, rebuild(fields, {n = true}, {'n', int(attempts)}), now + tonumber(ARGV[6]))
elseif action == 'bury' then
  bury(base, dlq, ARGV[7], lvl, sid, fields, ARGV[6], tonumber(ARGV[8]), ARGV[9] == '1')
  room(base)
else
  remove(base, lvl, sid)
  room(base)
end
tidy(base, lvl)
return 1
