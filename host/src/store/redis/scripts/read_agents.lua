-- read_agents(id|''): one agent (or none), or every agent by id when id is ''. A consistent read, no change.
local id = arg(1)
if id ~= '' then
  if not agent_exists(id) then return ok() end
  return ok(agent_view(id))
end
local views = {}
for _, agent in ipairs(redis.call('ZRANGE', K.agents, 0, -1)) do table.insert(views, agent_view(agent)) end
return ok(views)
