-- A session's touch with an expiry already decided (scalekit.sessions._redis).
-- KEYS[1] the session's key; ARGV[1] accessed_at (8-byte big-endian double),
-- ARGV[2] the TTL in ms ("0": none). Sets accessed_at in place (the data is not
-- rewritten) unless the stored one is later (a retry of this touch after another
-- write: nothing moves back). 1, or 0 if the key is gone or not a session.
local head = redis.call('GETRANGE', KEYS[1], 0, 27)
local magic = string.sub(head, 1, 4)
if #head < 28 or (magic ~= 'SKS2' and magic ~= 'SKS1') then return 0 end
if struct.unpack('>d', head, 21) > struct.unpack('>d', ARGV[1]) then return 1 end
redis.call('SETRANGE', KEYS[1], 20, ARGV[1])
if ARGV[2] == '0' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
