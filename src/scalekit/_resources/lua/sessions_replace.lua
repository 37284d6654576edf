-- The compare-and-set of a session save (scalekit.sessions._redis).
-- KEYS[1] the session's key.
-- ARGV[1] the expected version (8 bytes, big-endian), ARGV[2] the new record
-- (SKS2), ARGV[3] its TTL in ms ("0": none), ARGV[4] the op id (8 bytes).
-- 1 if stored, or if this op stored it already (a client's retry: the op id is in
-- the record's ring of the last 4 writes); 0 if the version differs or the key is
-- gone. Bytes 29-60 of an SKS2 record are that ring, newest first.
local head = redis.call('GETRANGE', KEYS[1], 0, 59)
local magic = string.sub(head, 1, 4)
local ring = ''
if magic == 'SKS2' then
  ring = string.sub(head, 29, 60)
elseif magic ~= 'SKS1' then
  return 0
end
if string.sub(head, 5, 12) ~= ARGV[1] then
  for i = 1, #ring, 8 do
    if string.sub(ring, i, i + 7) == ARGV[4] then return 1 end
  end
  return 0
end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
redis.call('SETRANGE', KEYS[1], 28, ARGV[4] .. string.sub(ring, 1, 24))
return 1
