-- scalekit.mq, Redis Streams backend: wake
-- Runs after mq_prelude.lua (the shared helpers), loaded by scalekit.mq._redis._scripts.
-- KEYS: base. ARGV: getters to wake, whether to wake putters ('1').
signal(KEYS[1], tonumber(ARGV[1]), 'c')
if ARGV[2] == '1' then room(KEYS[1]) end
return 1
