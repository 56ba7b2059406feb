-- schedule_read(op, ...): one schedule (`one id`), every schedule (`all`), or those due now, the most overdue
-- first (`due limit`); each as its hash's field list. A read.
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
return ok(records)
