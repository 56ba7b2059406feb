-- register_waiter(token, agent, caps, lifetime ms): a blocked claim's single-use token (lib.lua `add_waiter`), for
-- claims that look through dispatch policies before they wait.
local token, agent, caps, lifetime = arg(1), arg(2), arg(3), tonumber(arg(4))
if not agent_exists(agent) then return fail(no_agent(agent)) end
add_waiter(token, agent, caps, lifetime)
return ok()
