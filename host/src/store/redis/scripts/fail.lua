-- fail(task, fence kind, fence value, error, requeue '1'|'0', kind task|agent, seed): requeued while retries remain
-- (if asked), else failed.
local id, kind, fence, message, want_requeue, blame = arg(1), arg(2), arg(3), arg(4), arg(5) == '1', arg(6)
seed(arg(7))
local stored, e = repeated_outcome(id, kind, fence, 'failed', message)
if e then return fail(e) end
if stored then return ok(task_view(id)) end
e = check_fence(id, kind, fence)
if e then return fail(e) end
local k = tkey(id)
local t = redis.call('HMGET', k, 'agent', 'retries', 'max_retries', 'lease')
local agent = t[1]
local retry = want_requeue and tonumber(t[2]) < tonumber(t[3])
if agent and agent_exists(agent) then
  redis.call('HINCRBY', akey(agent), 'failed', 1)
  agent_changed(agent)
end
-- Only failures blamed on the agent feed its breaker: a poison task must not open the breakers of every agent it
-- visits.
if blame == 'agent' and agent then breaker_failure(agent, id) end
if retry then
  if t[4] then
    redis.call('HSET', k, 'rq_lease', t[4], 'rq_error', message)
  else
    redis.call('HDEL', k, 'rq_lease', 'rq_error')
  end
  drop_lease(id, nil)
  requeue(id, true, 'task_failed', message)
  local retries = tonumber(redis.call('HGET', k, 'retries'))
  emit('task_retried', id, agent or nil, json({ error = message, kind = blame, retries = retries }))
else
  local writes = outcome_writes(id, kind, nil, 'error', message, 'le_code', 'task_failed', 'le_msg', message)
  drop_lease(id, nil)
  set_status(id, 'failed', nil, writes)
  emit('task_failed', id, agent or nil, json({ error = message, kind = blame }))
end
return ok(task_view(id))
