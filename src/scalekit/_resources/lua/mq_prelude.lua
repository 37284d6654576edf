-- scalekit.mq, Redis Streams backend: helpers every mq_*.lua script starts with.
-- KEYS[1] is the queue's base key and KEYS[2] its dead letters' (a dead-letter queue
-- passes its own base there, read as "none"); the scripts derive the other key
-- names, which all share the base's hash tag. Numbers built into strings go through
-- int(): Lua's tostring keeps only 14 digits.
local G = 'scalekit'

-- Idempotence. redis-py runs a command again after a lost connection, so a script
-- may run twice. Each script that changes something gets an operation id (its
-- last ARGV); its first run records its reply under base:op:<id> for OP_TTL ms,
-- and a second run returns that reply and changes nothing.
local OP_TTL = 60000

-- the reply recorded for operation `op` (a second run), or nil
local function replayed(base, op)
  local r = redis.call('GET', base .. ':op:' .. op)
  if r then return cmsgpack.unpack(r) end
  return nil
end

-- record `reply` as operation `op`'s, and return it
local function record(base, op, reply)
  redis.call('SET', base .. ':op:' .. op, cmsgpack.pack(reply), 'PX', OP_TTL)
  return reply
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- an integer as a string, exactly (tostring loses digits past 1e14)
local function int(x) return string.format('%d', x) end

local function skey(base, lvl) return base .. ':s:' .. lvl end

local function extkey(lvl, sid) return lvl .. '/' .. sid end

local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end

-- the fields without those named in `drop`, then `extra`
local function rebuild(fields, drop, extra)
  local out = {}
  for i = 1, #fields, 2 do
    if not drop[fields[i]] then
      out[#out + 1] = fields[i]
      out[#out + 1] = fields[i + 1]
    end
  end
  for i = 1, #extra do out[#out + 1] = extra[i] end
  return out
end

-- the stream of a priority level, with its consumer group, listed in :levels
local function ensure_level(base, lvl)
  local levels = base .. ':levels'
  if not redis.call('ZSCORE', levels, lvl) then
    redis.pcall('XGROUP', 'CREATE', skey(base, lvl), G, '0', 'MKSTREAM')
    redis.call('ZADD', levels, tonumber(lvl), lvl)
  end
end

-- drop the stream of an emptied level (level 0 stays: it is the usual one)
local function tidy(base, lvl)
  if lvl ~= '0' then
    local s = skey(base, lvl)
    if redis.call('XLEN', s) == 0 then
      redis.call('DEL', s)
      redis.call('ZREM', base .. ':levels', lvl)
      redis.call('HDEL', base .. ':cur', lvl)
    end
  end
end

-- wake up to k blocked getters (each signal entry goes to one consumer)
local function signal(base, k, why)
  if k > 0 then
    local sig = base .. ':signal'
    if redis.call('EXISTS', sig) == 1 then
      if k > 64 then k = 64 end
      for _ = 1, k do redis.call('XADD', sig, 'MAXLEN', '~', '256', '*', 'w', why) end
    end
  end
end

-- wake every blocked putter (they read :room with XREAD, so all see it)
local function room(base)
  local r = base .. ':room'
  if redis.call('EXISTS', r) == 1 then
    redis.call('XADD', r, 'MAXLEN', '~', '64', '*', 'r', '1')
  end
end

local function remove(base, lvl, sid)
  local s = skey(base, lvl)
  redis.call('XACK', s, G, sid)
  redis.call('XDEL', s, sid)
  redis.call('HDEL', base .. ':ext', extkey(lvl, sid))
end

local DROP_DEAD = {n = true, r = true, q = true, a = true}

-- a message whose body or headers cannot be decoded keeps its data as a bytes
-- body ('k' = 'b') and loses its headers
local DROP_DAMAGED = {n = true, r = true, q = true, a = true, k = true, h = true}

local function bury(base, dlq, name, lvl, sid, fields, reason, attempts, damaged)
  remove(base, lvl, sid)
  ensure_level(dlq, lvl)
  local extra = {'r', reason, 'q', name, 'a', int(attempts)}
  local drop = DROP_DEAD
  if damaged then
    drop = DROP_DAMAGED
    extra[#extra + 1] = 'k'
    extra[#extra + 1] = 'b'
  end
  local moved = rebuild(fields, drop, extra)
  redis.call('XADD', skey(dlq, lvl), '*', unpack(moved))
  redis.call('HINCRBY', base .. ':stats', 'dead_lettered', 1)
  signal(dlq, 1, 'p')
end

local function expiry_reason(attempts)
  return 'not settled within the visibility timeout on delivery ' .. int(attempts)
end

-- what bury_expired moved in this call, for the caller to log: {message id, deliveries}...
local expired = {}

-- dead-letter an entry whose last delivery timed out (`attempts` deliveries)
local function bury_expired(base, dlq, name, lvl, sid, fields, attempts)
  bury(base, dlq, name, lvl, sid, fields, expiry_reason(attempts), attempts)
  expired[#expired + 1] = field(fields, 'i') or sid
  expired[#expired + 1] = int(attempts)
end

local function delay(base, lvl, fields, due)
  local packed = {lvl}
  for i = 1, #fields do packed[#packed + 1] = fields[i] end
  redis.call('ZADD', base .. ':delayed', due, cmsgpack.pack(packed))
end

-- move due delayed messages into their streams; how many moved
local function promote(base, now)
  local dk = base .. ':delayed'
  local due = redis.call('ZRANGEBYSCORE', dk, '-inf', now, 'LIMIT', 0, 1000)
  for _, m in ipairs(due) do
    local t = cmsgpack.unpack(m)
    ensure_level(base, t[1])
    redis.call('XADD', skey(base, t[1]), '*', unpack(t, 2))
  end
  if #due > 0 then redis.call('ZREM', dk, unpack(due)) end
  return #due
end

-- an extension past now: its deadline, delivery count and owner; else false
local function extended(base, lvl, sid, now)
  local key = extkey(lvl, sid)
  local x = redis.call('HGET', base .. ':ext', key)
  if not x then return false end
  local deadline, count, owner = string.match(x, '^(%d+) (%d+) (.+)$')
  if tonumber(deadline) > now then return tonumber(deadline), count, owner end
  redis.call('HDEL', base .. ':ext', key)
  return false
end

-- whether `me` still holds delivery `count` of entry `sid`
local function owns(s, sid, me, count)
  if redis.call('EXISTS', s) == 0 then return false end
  local p = redis.call('XPENDING', s, G, sid, sid, 1)
  return #p == 1 and p[1][2] == me and p[1][4] == count
end

-- pending entries idle for vt or more (timed out, nacked or given back)
local function reclaimable(s, vt)
  local pc = redis.call('XPENDING', s, G)[1]
  if pc == 0 then return {} end
  return redis.call('XPENDING', s, G, 'IDLE', vt, '-', '+', pc)
end
