-- heartbeat(id, session|'', status|'', has_list, task ids...): keeps the agent alive, applies its status and task
-- list (leases older than the heartbeat interval missing from it are released), answers its revocations.
local id, session, status, has_list = arg(1), arg(2), arg(3), arg(4) == '1'
local e = check_session(id, session)
if e then return fail(e) end
touch(id)
if has_list then
  local listed = {}
  local i = 5
  while arg(i) do
    listed[arg(i)] = true
    i = i + 1
  end
  local held = redis.call('HGETALL', lkey(id))
  local order = {}
  for j = 1, #held, 2 do table.insert(order, { held[j], tonumber(held[j + 1]) }) end
  table.sort(order, function(a, b) return a[1] < b[1] end)
  for _, lease in ipairs(order) do
    local task, granted_at = lease[1], lease[2]
    if listed[task] then
      mark_started(task)
    elseif NOW - granted_at >= CFG.heartbeat_interval then
      -- The agent never heard of this grant: release it, no retry counted.
      drop_lease(task, 'reassigned')
      requeue(task, false, nil, nil)
      emit('task_released', task, id, json({ reason = 'undelivered' }))
    end
  end
end
if status ~= '' then
  local current = redis.call('HGET', akey(id), 'status')
  local target = status
  -- Capacity decides between ready and busy.
  if status == 'ready' or status == 'busy' then target = 'ready' end
  if current ~= target then set_agent_status(id, target) end
  refresh_capacity(id)
  if status == 'busy' then set_agent_status(id, 'busy') end
end
local revoked = redis.call('LRANGE', revkey(id), 0, -1)
redis.call('DEL', revkey(id))
return ok(redis.call('HGET', akey(id), 'status'), revoked, REQUEUED)
