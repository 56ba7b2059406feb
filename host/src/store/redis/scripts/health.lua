-- health(agent|''): one agent's health and breaker, or every agent's by id; reading turns an open breaker past its
-- cooldown half-open, so the answer is current.
local id = arg(1)
local ids
if id ~= '' then
  if not agent_exists(id) then return ok({}) end
  ids = { id }
else
  ids = redis.call('ZRANGE', K.agents, 0, -1)
end
local records = {}
for _, agent in ipairs(ids) do
  eligible(agent)
  local record = redis.call('HGETALL', akey(agent))
  -- The breaker's failures on record live in their own list.
  table.insert(record, 'b_failures')
  table.insert(record, n2s(redis.call('LLEN', fkey(agent))))
  table.insert(records, record)
end
return ok(records)
