-- housekeeping(task retention ms, agent retention ms, limit): removes terminal tasks ended long ago, agents offline
-- for long, and expired idempotency keys; bounded range reads, never a scan.
local task_retention, agent_retention, limit = tonumber(arg(1)), tonumber(arg(2)), tonumber(arg(3))
local removed = 0
while removed < limit do
  local first = redis.call('ZRANGE', K.finished, 0, 0, 'WITHSCORES')
  if #first == 0 or tonumber(first[2]) + task_retention > NOW then break end
  local id = first[1]
  redis.call('ZREM', K.finished, id)
  if task_exists(id) then
    local t = redis.call('HMGET', tkey(id), 'status', 'type')
    redis.call('ZREM', K.tasks, id)
    redis.call('HINCRBY', K.stats, 'status:' .. t[1], -1)
    if redis.call('HINCRBY', K.stats, 'type:' .. t[2], -1) <= 0 then redis.call('HDEL', K.stats, 'type:' .. t[2]) end
    redis.call('DEL', tkey(id))
    removed = removed + 1
  end
end
if removed < limit then
  local stale = redis.call('ZRANGEBYSCORE', K.offline, '-inf', NOW - agent_retention, 'LIMIT', 0, limit - removed)
  for _, id in ipairs(stale) do
    mark(id)
    redis.call('DEL', akey(id), lkey(id), revkey(id), fkey(id), wskey(id))
    agent_changed(id)
    redis.call('ZREM', K.agents, id)
    redis.call('ZREM', K.expiry, id)
    redis.call('ZREM', K.offline, id)
    redis.call('HDEL', K.beats, id)
    emit('agent_unregistered', nil, id, json({ reason = 'retention' }))
    removed = removed + 1
  end
end
local expired = redis.call('ZRANGEBYSCORE', K.idem_exp, '-inf', NOW_S, 'LIMIT', '0', n2s(math.max(limit, 100)))
for _, s in ipairs(expired) do
  redis.call('ZREM', K.idem_exp, s)
  redis.call('HDEL', K.idem, s)
end
return ok(n2s(removed))
