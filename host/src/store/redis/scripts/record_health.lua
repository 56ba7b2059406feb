-- record_health(agent, status, message, latency|''): a probe verdict; unhealthy fails the agent (until a healthy
-- verdict) and feeds its breaker.
local id, verdict, message, latency = arg(1), arg(2), arg(3), arg(4)
if not agent_exists(id) then return fail(no_agent(id)) end
mark(id)
local k = akey(id)
local previous = redis.call('HGET', k, 'h_status')
redis.call('HSET', k, 'h_status', verdict, 'h_check', NOW_S, 'h_message', message)
agent_changed(id)
if latency ~= '' then redis.call('HSET', k, 'h_latency', latency) else redis.call('HDEL', k, 'h_latency') end
local status = redis.call('HGET', k, 'status')
if verdict == 'unhealthy' then
  redis.call('HINCRBY', k, 'h_fails', '1')
  breaker_failure(id, nil)
  if status ~= 'offline' and status ~= 'failed' then
    set_agent_status(id, 'failed')
    redis.call('HSET', k, 'h_byprobe', '1', 'h_before', status)
  end
elseif verdict == 'healthy' or verdict == 'degraded' then
  redis.call('HSET', k, 'h_fails', '0')
  local a = redis.call('HMGET', k, 'h_byprobe', 'h_before')
  if status == 'failed' and a[1] == '1' then
    local back = a[2] == 'draining' and 'draining' or 'ready'
    redis.call('HDEL', k, 'h_before')
    set_agent_status(id, back)
    refresh_capacity(id)
  end
end
if previous ~= verdict then
  emit('health_changed', nil, id, json({ from = previous, to = verdict, message = message }))
end
return ok(redis.call('HGETALL', k))
