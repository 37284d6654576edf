-- scalekit.mq, Redis Streams backend: ack
-- Runs after mq_prelude.lua (the shared helpers), loaded by scalekit.mq._redis._scripts.
-- KEYS: base. ARGV: level, entry id, consumer, delivery count, operation id.
-- Returns 1, or 0 when that delivery no longer holds the entry (1 again when run
-- again with the same operation id).
local base, lvl, sid, op = KEYS[1], ARGV[1], ARGV[2], ARGV[5]
if replayed(base, op) then return 1 end
if not owns(skey(base, lvl), sid, ARGV[3], tonumber(ARGV[4])) then return 0 end
record(base, op, 1)
remove(base, lvl, sid)
redis.call('HINCRBY', base .. ':stats', 'acked', 1)
room(base)
tidy(base, lvl)
return 1
