-- assign(task, token, lease): grants the task through a waiter token, only if the task is still pending, the token
-- unused and unexpired, and the agent still eligible.
local id, token, lease = arg(1), arg(2), arg(3)
local w = redis.call('HMGET', wkey(token), 'agent', 'caps', 'until')
if not w[1] or redis.call('ZSCORE', K.waiters, token) == false then return ok() end
local agent = w[1]
if waiter_expired(w[3]) then
  -- Its claim is over: withdrawn by now, or its server died. Nobody would receive the task.
  redis.call('ZREM', K.waiters, token)
  redis.call('DEL', wkey(token))
  redis.call('SREM', wskey(agent), token)
  return ok()
end
if not agent_exists(agent) then return ok() end
-- The waiter's capabilities may have been narrowed by the claim, never widened past the registration.
local holds = cap_set(redis.call('HGET', akey(agent), 'caps'))
if not task_exists(id) then return fail(no_task(id)) end
local t = redis.call('HMGET', tkey(id), 'status', 'avail', 'caps')
local claimable = t[1] == 'pending' and (not t[2] or tonumber(t[2]) <= NOW) and subset(t[3], cap_set(w[2]))
    and subset(t[3], holds)
if not claimable or not eligible(agent) then return ok() end
redis.call('ZREM', K.waiters, token)
redis.call('DEL', wkey(token))
redis.call('SREM', wskey(agent), token)
dequeue(id)
touch(agent)
grant(id, agent, 'routed', lease, token)
redis.call('HSET', K.consumed, token, id .. ' ' .. lease)
return ok(task_view(id))
