-- scalekit.mq, Redis Streams backend: take
-- Runs after mq_prelude.lua (the shared helpers), loaded by scalekit.mq._redis._scripts.
-- KEYS: base, dead letters' base (the base itself for a dead-letter queue)
-- ARGV: consumer, n, visibility timeout ms, max deliveries (0: none), queue name,
--       arm ('1': if nothing is ready, make ready the signal stream to block on),
--       operation id
-- Returns {k, then k times: level, entry id, delivery count, fields}
-- or, when nothing was ready, {0, ms until something may be due (-1: unknown)},
-- then the messages it dead-lettered for their visibility timeout: {id, deliveries...}.
-- Run again with the same operation id, it returns the deliveries of the first
-- run that `me` still holds, and takes nothing.
local base, dlq = KEYS[1], KEYS[2]
if dlq == base then dlq = '' end
local me, need, vt = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local maxd, name, arm, op = tonumber(ARGV[4]), ARGV[5], ARGV[6] == '1', ARGV[7]
local receipts = replayed(base, op)
if receipts then
  local again = {0}
  for i = 1, #receipts, 3 do
    local lvl, sid, count = receipts[i], receipts[i + 1], receipts[i + 2]
    local s = skey(base, lvl)
    if owns(s, sid, me, count) then
      local entry = redis.call('XRANGE', s, sid, sid)[1]
      if entry then
        again[#again + 1] = lvl
        again[#again + 1] = sid
        again[#again + 1] = count
        again[#again + 1] = entry[2]
        again[1] = again[1] + 1
      end
    end
  end
  if again[1] > 0 then
    again[#again + 1] = {}
    return again
  end
  return {0, -1, {}}
end
local now = now_ms()
local promoted = promote(base, now)
local out = {0}
local taken = {}
local redelivered, buried = 0, 0

local function deliver(lvl, sid, count, fields)
  out[#out + 1] = lvl
  out[#out + 1] = sid
  out[#out + 1] = count
  out[#out + 1] = fields
  out[1] = out[1] + 1
  taken[#taken + 1] = lvl
  taken[#taken + 1] = sid
  taken[#taken + 1] = count
  need = need - 1
  if count + tonumber(field(fields, 'n') or '0') ~= 1 then redelivered = redelivered + 1 end
end

-- entries XAUTOCLAIM just gave `me`: hand back the extended ones to their owner,
-- dead-letter the exhausted ones, deliver the rest
local function claimed(lvl, s, entries)
  for _, e in ipairs(entries) do
    local sid, fields = e[1], e[2]
    if type(fields) ~= 'table' then
      redis.call('XACK', s, G, sid)  -- deleted while pending (Redis 6.2 lists them)
    else
      local count = redis.call('XPENDING', s, G, sid, sid, 1)[1][4]
      local deadline, ecount, owner = extended(base, lvl, sid, now)
      if deadline then
        redis.call('XCLAIM', s, G, owner, 0, sid, 'TIME', int(deadline - vt),
          'RETRYCOUNT', ecount, 'JUSTID')
      else
        local before = tonumber(field(fields, 'n') or '0') + count - 1
        if maxd > 0 and dlq ~= '' and before >= maxd then
          bury_expired(base, dlq, name, lvl, sid, fields, before)
          buried = buried + 1
        else
          deliver(lvl, sid, count, fields)
        end
      end
    end
  end
end

local levels = redis.call('ZREVRANGE', base .. ':levels', 0, -1)
for _, lvl in ipairs(levels) do
  if need <= 0 then break end
  local s = skey(base, lvl)
  -- timed out, nacked, given back: the oldest first, then on from a kept cursor
  local r = redis.call('XAUTOCLAIM', s, G, me, vt, '0-0', 'COUNT', need)
  claimed(lvl, s, r[2])
  if need > 0 and r[1] ~= '0-0' then
    local cur = redis.call('HGET', base .. ':cur', lvl)
    if not cur or cur == '0-0' then cur = r[1] end
    r = redis.call('XAUTOCLAIM', s, G, me, vt, cur, 'COUNT', need)
    redis.call('HSET', base .. ':cur', lvl, r[1])
    claimed(lvl, s, r[2])
  end
  if need > 0 then
    local got = redis.call('XREADGROUP', 'GROUP', G, me, 'COUNT', need, 'STREAMS', s, '>')
    if got then
      for _, e in ipairs(got[1][2]) do deliver(lvl, e[1], 1, e[2]) end
    end
  end
  if buried > 0 then tidy(base, lvl) end
end

if out[1] > 0 then
  record(base, op, taken)
  redis.call('HINCRBY', base .. ':stats', 'delivered', out[1])
  if redelivered > 0 then redis.call('HINCRBY', base .. ':stats', 'redelivered', redelivered) end
end
if buried > 0 then room(base) end
if promoted > out[1] then signal(base, promoted - out[1], 'p') end
if out[1] > 0 then
  out[#out + 1] = expired
  return out
end

local hint = -1
if arm then
  local sig = base .. ':signal'
  if redis.call('EXISTS', sig) == 1 then
    redis.call('XTRIM', sig, 'MAXLEN', 0)  -- nothing is ready: every signal is stale
  else
    redis.call('XGROUP', 'CREATE', sig, G, '$', 'MKSTREAM')
  end
  local first = redis.call('ZRANGE', base .. ':delayed', 0, 0, 'WITHSCORES')
  if #first > 0 then hint = tonumber(first[2]) - now end
  for _, lvl in ipairs(redis.call('ZRANGE', base .. ':levels', 0, -1)) do
    local p = redis.call('XPENDING', skey(base, lvl), G, '-', '+', 1)
    if #p > 0 then
      local due = vt - p[1][3]
      if due < 0 then due = 0 end
      if hint < 0 or due < hint then hint = due end
    end
  end
end
return {0, hint, expired}
