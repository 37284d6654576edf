-- scalekit.mq, Redis Streams backend: subscribe
-- Runs after mq_prelude.lua (the shared helpers), loaded by scalekit.mq._redis._scripts.
-- KEYS: the topic's subscriptions (a sorted set, scored in subscription order).
-- ARGV: group. Idempotent; a group subscribing again after leaving goes last.
local key, group = KEYS[1], ARGV[1]
if redis.call('ZSCORE', key, group) then return 0 end
local last = redis.call('ZREVRANGE', key, 0, 0, 'WITHSCORES')
local score = 1
if #last > 0 then score = tonumber(last[2]) + 1 end
redis.call('ZADD', key, score, group)
return 1
