-- claim_if(task, agent, has_caps, caps, session|'', lease): grants the task if it is still pending and claimable by
-- the agent with the claim's capabilities (the registered ones, narrowed by the claim's when it names some).
local id, agent, has_caps, caps, session, lease = arg(1), arg(2), arg(3) == '1', arg(4), arg(5), arg(6)
local e = check_session(agent, session)
if e then return fail(e) end
touch(agent)
if not task_exists(id) then return fail(no_task(id)) end
local registered = cap_set(redis.call('HGET', akey(agent), 'caps'))
local claiming = registered
if has_caps then
  claiming = {}
  for cap in pairs(cap_set(caps)) do
    if registered[cap] then claiming[cap] = true end
  end
end
claiming[address_of(agent)] = true
local t = redis.call('HMGET', tkey(id), 'status', 'avail', 'caps')
local claimable = t[1] == 'pending' and (not t[2] or tonumber(t[2]) <= NOW) and subset(t[3], claiming)
if not claimable or not eligible(agent) then return ok() end
dequeue(id)
grant(id, agent, 'claim', lease)
return ok(task_view(id))
