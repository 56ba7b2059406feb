-- sweep_timeouts(limit, seed): ends attempts past their deadline (requeue, or `timeout` with no retries left).
local limit = tonumber(arg(1))
seed(arg(2))
local swept = 0
while swept < limit do
  local first = redis.call('ZRANGE', K.leases, 0, 0, 'WITHSCORES')
  if #first == 0 or tonumber(first[2]) > NOW then break end
  local id = first[1]
  swept = swept + 1
  local t = redis.call('HMGET', tkey(id), 'agent', 'attempt', 'timeout')
  local agent, attempt = t[1], tonumber(t[2])
  if agent then breaker_failure(agent, id) end
  drop_lease(id, 'timeout')
  emit('task_timeout', id, agent or nil, json({ attempt = attempt }))
  local message = 'attempt ' .. n2s(attempt) .. ' ran past ' .. t[3] .. ' s'
  local r = redis.call('HMGET', tkey(id), 'retries', 'max_retries')
  if tonumber(r[1]) < tonumber(r[2]) then
    requeue(id, true, 'timeout', message)
    emit('task_retried', id, nil, json({ reason = 'timeout' }))
  else
    redis.call('HSET', tkey(id), 'le_code', 'timeout', 'le_msg', message)
    set_status(id, 'timeout')
  end
end
return ok(n2s(swept), REQUEUED)
