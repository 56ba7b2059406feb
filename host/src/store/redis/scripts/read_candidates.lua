-- read_candidates(id, id, ...): each existing agent's view and health record (an open breaker past its cooldown
-- turns half-open, as health does), in the order asked: the routing of one task in one round trip.
local found = {}
for i = 1, #ARGV - ARG_BASE do
  local id = arg(i)
  if agent_exists(id) then
    refusal(id)
    table.insert(found, { agent_view(id), redis.call('HGETALL', akey(id)) })
  end
end
return ok(found)
