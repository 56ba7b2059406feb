-- release(task, lease): a committed grant that never reached its agent goes back to pending at its place, no retry
-- counted; a lease that no longer holds the task is a no-op.
local id, lease = arg(1), arg(2)
if not task_exists(id) then return fail(no_task(id)) end
local t = redis.call('HMGET', tkey(id), 'status', 'lease', 'agent')
if (t[1] ~= 'claimed' and t[1] ~= 'running') or t[2] ~= lease then return ok('0') end
drop_lease(id, 'reassigned')
requeue(id, false, nil, nil)
emit('task_released', id, t[3] or nil, json({ reason = 'undelivered' }))
return ok('1')
