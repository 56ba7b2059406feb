-- decisions_read('task', task_id) → the task's decisions as `<id> <json>`, oldest first (those the stream still
-- holds: a record trimmed by `DECISION_LOG_MAX` is gone from the task's answer too);
-- decisions_read('range', start, count) → up to count `<id> <json>` from the stream, from `start` (an XRANGE bound).
local mode, stream = arg(1), P .. 'decisions'
local out = {}
if mode == 'task' then
  for _, id in ipairs(redis.call('LRANGE', P .. 'decisions:task:' .. arg(2), 0, -1)) do
    local entry = redis.call('XRANGE', stream, id, id)[1]
    if entry then table.insert(out, entry[1] .. ' ' .. entry[2][2]) end
  end
  return ok(out)
end
for _, entry in ipairs(redis.call('XRANGE', stream, arg(2), '+', 'COUNT', tonumber(arg(3)))) do
  table.insert(out, entry[1] .. ' ' .. entry[2][2])
end
return ok(out)
