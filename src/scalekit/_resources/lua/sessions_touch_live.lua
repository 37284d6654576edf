-- The public touch of a session in one round trip (scalekit.sessions._redis).
-- KEYS[1] the session's key; ARGV[1] now (8-byte big-endian double), ARGV[2]
-- idle_timeout, ARGV[3] absolute_timeout ("": none). Computes the expiry from the
-- stored timestamps as scalekit.sessions._session.expires_at does, with the same
-- double arithmetic. 1 if touched (or touched later already: a retry moves
-- nothing back); 0 if gone or expired (then nothing changes); -1 if the value is
-- not a session record.
local head = redis.call('GETRANGE', KEYS[1], 0, 59)
if head == '' and redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local magic = string.sub(head, 1, 4)
if not ((magic == 'SKS2' and #head >= 60) or (magic == 'SKS1' and #head >= 28)) then
  return -1
end
local created = struct.unpack('>d', head, 13)
local accessed = struct.unpack('>d', head, 21)
local now = struct.unpack('>d', ARGV[1])
local idle, absolute = tonumber(ARGV[2]), tonumber(ARGV[3])
local limit = math.huge
if absolute then limit = created + absolute end
local expires = limit
if idle then expires = math.min(accessed + idle, limit) end
if expires <= now then return 0 end
if accessed > now then return 1 end
if idle then expires = math.min(now + idle, limit) end
redis.call('SETRANGE', KEYS[1], 20, ARGV[1])
if expires == math.huge then
  redis.call('PERSIST', KEYS[1])
  return 1
end
local ms = math.ceil((expires - now) * 1000)
if ms < 1 then ms = 1 elseif ms > 1e15 then ms = 1e15 end
redis.call('PEXPIRE', KEYS[1], string.format('%d', ms))
return 1
