-- claim_if(task, agent, caps, session|'', lease): grants the task if it is still pending and claimable by the agent.
local id, agent, caps, session, lease = arg(1), arg(2), arg(3), arg(4), arg(5)
local e = check_session(agent, session)
if e then return fail(e) end
touch(agent)
if not task_exists(id) then return fail(no_task(id)) end
local t = redis.call('HMGET', tkey(id), 'status', 'avail', 'caps')
local claimable = t[1] == 'pending' and (not t[2] or tonumber(t[2]) <= NOW) and subset(t[3], cap_set(caps))
if not claimable or not eligible(agent) then return ok() end
dequeue(id)
grant(id, agent, 'claim', lease)
return ok(task_view(id))
