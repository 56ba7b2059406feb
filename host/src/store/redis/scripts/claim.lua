-- claim(agent, caps, max_tasks, session|'', lease ids...): grants the best pending tasks the agent can take.
local leases = {}
local i = 5
while arg(i) do
  table.insert(leases, arg(i))
  i = i + 1
end
local granted, e = claim(arg(1), arg(2), tonumber(arg(3)), arg(4), leases)
if e then return fail(e) end
local views = {}
for _, id in ipairs(granted) do table.insert(views, task_view(id)) end
return ok(views)
