-- scalekit.mq, Redis Streams backend: stats
-- Runs after mq_prelude.lua (the shared helpers), loaded by scalekit.mq._redis._scripts.
-- KEYS: base, dead letters' base (the base itself: none)
-- ARGV: visibility timeout ms, max deliveries, name
-- Returns {ready, delayed, in flight, dead letters, oldest put time ms (-1), now ms,
--          delivered, redelivered, acked, dead lettered,
--          {id, deliveries} of each message dead-lettered for its visibility timeout}.
local base, dlq = KEYS[1], KEYS[2]
if dlq == base then dlq = '' end
local vt, maxd, name = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local now = now_ms()
promote(base, now)
local ready, inflight, oldest, buried = 0, 0, -1, 0
local function older(t)
  if t and (oldest < 0 or tonumber(t) < oldest) then oldest = tonumber(t) end
end
for _, lvl in ipairs(redis.call('ZRANGE', base .. ':levels', 0, -1)) do
  local s = skey(base, lvl)
  local len = redis.call('XLEN', s)
  local pc = redis.call('XPENDING', s, G)[1]
  ready = ready + len - pc
  inflight = inflight + pc
  local head = redis.call('XRANGE', s, '-', '+', 'COUNT', 1)[1]
  if head then older(field(head[2], 't')) end
  for _, e in ipairs(reclaimable(s, vt)) do
    local sid = e[1]
    if not extended(base, lvl, sid, now) then
      local entry = redis.call('XRANGE', s, sid, sid)[1]
      inflight = inflight - 1
      if entry then
        local before = tonumber(field(entry[2], 'n') or '0') + e[4]
        if maxd > 0 and dlq ~= '' and before >= maxd then
          bury_expired(base, dlq, name, lvl, sid, entry[2], before)
          buried = buried + 1
        else
          ready = ready + 1
        end
      end
    end
  end
  if buried > 0 then tidy(base, lvl) end
end
if buried > 0 then room(base) end
local dk = base .. ':delayed'
local delayed = redis.call('ZCARD', dk)
local nextdue = redis.call('ZRANGE', dk, 0, 0)[1]
if nextdue then
  local t = cmsgpack.unpack(nextdue)
  older(field({unpack(t, 2)}, 't'))
end
local dead = 0
if dlq ~= '' then
  dead = redis.call('ZCARD', dlq .. ':delayed')
  for _, lvl in ipairs(redis.call('ZRANGE', dlq .. ':levels', 0, -1)) do
    dead = dead + redis.call('XLEN', skey(dlq, lvl))
  end
end
local c = redis.call('HMGET', base .. ':stats',
  'delivered', 'redelivered', 'acked', 'dead_lettered')
return {ready, delayed, inflight, dead, oldest, now,
  tonumber(c[1] or '0'), tonumber(c[2] or '0'), tonumber(c[3] or '0'), tonumber(c[4] or '0'),
  expired}
