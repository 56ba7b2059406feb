-- sweep_offline(limit, seed): agents silent past the heartbeat timeout go offline and lose their leases.
local limit = tonumber(arg(1))
seed(arg(2))
local swept = 0
while swept < limit do
  local first = redis.call('ZRANGE', K.expiry, 0, 0, 'WITHSCORES')
  if #first == 0 or tonumber(first[2]) > NOW then break end
  local id = first[1]
  swept = swept + 1
  -- Off the expiry index until the agent shows a sign of life again.
  redis.call('ZREM', K.expiry, id)
  lose_all(id, 'the agent stopped heartbeating')
  remove_waiters_of(id)
  set_agent_status(id, 'offline')
  emit('agent_offline', nil, id, '{}')
end
return ok(n2s(swept), REQUEUED)
