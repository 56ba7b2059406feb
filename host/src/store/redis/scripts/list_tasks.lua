-- list_tasks(before seq, limit, status|'', type|'', agent|''): a page of tasks, newest first, and the next cursor
-- ('' on the last page). A read; walks the sequence index in chunks, as memory walks its by-sequence map.
local before, limit = tonumber(arg(1)), tonumber(arg(2))
local status, task_type, agent = arg(3), arg(4), arg(5)
local views, cursor = {}, ''
local max = '(' .. n2s(before)
while cursor == '' do
  local chunk = redis.call('ZREVRANGEBYSCORE', K.tasks, max, '-inf', 'WITHSCORES', 'LIMIT', 0, 200)
  if #chunk == 0 then break end
  for i = 1, #chunk, 2 do
    local id, seq = chunk[i], tonumber(chunk[i + 1])
    local t = redis.call('HMGET', tkey(id), 'status', 'type', 'agent')
    if (status == '' or t[1] == status) and (task_type == '' or t[2] == task_type)
        and (agent == '' or t[3] == agent) then
      if #views == limit then
        cursor = n2s(seq + 1)
        break
      end
      table.insert(views, task_view(id))
    end
    max = '(' .. n2s(seq)
  end
end
return ok(views, cursor)
