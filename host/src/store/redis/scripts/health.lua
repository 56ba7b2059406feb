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
  table.insert(records, redis.call('HGETALL', akey(agent)))
end
return ok(records)
