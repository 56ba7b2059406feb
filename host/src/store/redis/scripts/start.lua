-- start(task, fence kind, fence value): claimed → running.
local id, kind, fence = arg(1), arg(2), arg(3)
local e = check_fence(id, kind, fence)
if e then return fail(e) end
mark_started(id)
return ok(task_view(id))
