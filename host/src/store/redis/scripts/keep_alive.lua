-- keep_alive(agent): a sign of life that leaves the revocation notices for the next heartbeat.
local id = arg(1)
if not agent_exists(id) then return fail(no_agent(id)) end
touch(id)
return ok()
