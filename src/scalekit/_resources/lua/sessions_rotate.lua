-- A session's rotation to a new id (scalekit.sessions._redis).
-- KEYS[1] the old key, KEYS[2] the new key; ARGV as for sessions_replace.lua.
-- 1 if the record moved to the new key and the old key is gone, or if this op did
-- that already (a client's retry: the new key's ring holds the op id); 0 if the
-- old version differs or the new key is taken.
local head = redis.call('GETRANGE', KEYS[1], 0, 11)
local magic = string.sub(head, 1, 4)
if (magic == 'SKS2' or magic == 'SKS1') and string.sub(head, 5, 12) == ARGV[1]
    and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[1])
  if ARGV[3] == '0' then
    redis.call('SET', KEYS[2], ARGV[2])
  else
    redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  end
  redis.call('SETRANGE', KEYS[2], 28, ARGV[4])
  return 1
end
local moved = redis.call('GETRANGE', KEYS[2], 0, 59)
if string.sub(moved, 1, 4) == 'SKS2' then
  for i = 29, 60, 8 do
    if string.sub(moved, i, i + 7) == ARGV[4] then return 1 end
  end
end
return 0
