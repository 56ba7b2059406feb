-- cancel(task): pending → cancelled at once; claimed/running → cancelled with the lease revoked; cancelled stays.
local id = arg(1)
if not task_exists(id) then return fail(no_task(id)) end
local t = redis.call('HMGET', tkey(id), 'status', 'agent')
local status = t[1]
if status == 'pending' then
  dequeue(id)
  set_status(id, 'cancelled')
  emit('task_cancelled', id, nil, json({ was = 'pending' }))
elseif status == 'claimed' or status == 'running' then
  drop_lease(id, 'cancelled')
  set_status(id, 'cancelled')
  emit('task_cancelled', id, t[2] or nil, json({ was = status }))
elseif status ~= 'cancelled' then
  return fail(err('conflict', 'invalid_transition',
    'task ' .. id .. ' already ended ' .. status .. '; it cannot be cancelled'))
end
return ok(task_view(id))
