-- decisions_read('task', task_id) → the task's `<id> <json>` entries, oldest first;
-- decisions_read('range', start, count) → up to count {id, json} from the stream, from `start` (an XRANGE bound).
local mode = arg(1)
if mode == 'task' then
  return ok(redis.call('LRANGE', P .. 'decisions:task:' .. arg(2), 0, -1))
end
local out = {}
for _, entry in ipairs(redis.call('XRANGE', P .. 'decisions', arg(2), '+', 'COUNT', tonumber(arg(3)))) do
  table.insert(out, entry[1] .. ' ' .. entry[2][2])
end
return ok(out)
