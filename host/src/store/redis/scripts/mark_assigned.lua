-- mark_assigned(agent): the agent was chosen by a select: last_assigned_at in store time.
local id = arg(1)
if not agent_exists(id) then return fail(no_agent(id)) end
agent_set(id, 'assigned', NOW_S)
return ok()
