-- read_agents(id|''): one agent (or none), or every agent by id when id is ''; each view carries, fourth, why the
-- agent may not take work ('' when it may: lib.lua `refusal_of`). A consistent read, no change.
local id = arg(1)
if id ~= '' then
  if not agent_exists(id) then return ok() end
  local view = agent_view(id)
  table.insert(view, refusal_of(id) or '')
  return ok(view)
end
local views = {}
for _, agent in ipairs(redis.call('ZRANGE', K.agents, 0, -1)) do
  local view = agent_view(agent)
  table.insert(view, refusal_of(agent) or '')
  table.insert(views, view)
end
return ok(views)
