-- schedule_read(op, ...): one schedule (`one id`), every schedule (`all`), or those due now, the most overdue
-- first (`due limit`, then the ms until the next tick of the others, '' when none ticks); each as its hash's field
-- list. A read.
local op = arg(1)
local ids
if op == 'one' then
  ids = { arg(2) }
elseif op == 'all' then
  ids = redis.call('ZRANGE', K.schedules, 0, -1)
else
  ids = redis.call('ZRANGEBYSCORE', K.schedules_due, '-inf', NOW_S, 'LIMIT', '0', arg(2))
end
local records = {}
for _, id in ipairs(ids) do
  local record = redis.call('HGETALL', skey(id))
  if #record > 0 then table.insert(records, record) end
end
if op == 'due' then
  local next = redis.call('ZRANGE', K.schedules_due, n2s(#ids), n2s(#ids), 'WITHSCORES')[2]
  return ok(records, next and n2s(math.max(0, tonumber(next) - NOW)) or '')
end
return ok(records)
