-- set_paused(id, '1'|'0'): pauses or resumes an agent.
local id, paused = arg(1), arg(2)
if not agent_exists(id) then return fail(no_agent(id)) end
local a = redis.call('HMGET', akey(id), 'paused', 'status')
if a[1] ~= paused then
  mark(id)
  redis.call('HSET', akey(id), 'paused', paused)
  agent_changed(id)
  emit('agent_status_changed', nil, id, json({ paused = paused == '1', to = a[2] }))
end
return ok(agent_view(id))
