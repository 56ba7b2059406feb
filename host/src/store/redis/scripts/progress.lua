-- progress(task, fence kind, fence value, progress JSON): claimed → running, progress recorded.
local id, kind, fence, progress = arg(1), arg(2), arg(3), arg(4)
local e = check_fence(id, kind, fence)
if e then return fail(e) end
mark_started(id)
redis.call('HSET', tkey(id), 'progress', progress)
emit('task_progress', id, redis.call('HGET', tkey(id), 'agent') or nil, '{}')
return ok(task_view(id))
