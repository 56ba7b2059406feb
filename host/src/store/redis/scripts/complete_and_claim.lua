-- complete_and_claim(task, fence kind, fence value, result, reported latency|'', agent, caps, max_tasks,
-- session|'', lease ids...): the completion and the next claim in one step, refused before any change when the
-- claimant's session is stale.
local id, kind, fence, result, reported = arg(1), arg(2), arg(3), arg(4), arg(5)
local agent, caps, max_tasks, session = arg(6), arg(7), tonumber(arg(8)), arg(9)
local leases = {}
local i = 10
while arg(i) do
  table.insert(leases, arg(i))
  i = i + 1
end
local e = check_session(agent, session)
if e then return fail(e) end
e = complete(id, kind, fence, result, reported)
if e then return fail(e) end
local done = task_view(id)
local granted
granted, e = claim(agent, caps, max_tasks, session, leases)
if e then return fail(e) end
local views = {}
for _, g in ipairs(granted) do table.insert(views, task_view(g)) end
return ok(done, views)
