-- register_waiter(token, agent, caps, lifetime ms): a blocked claim's single-use token, ordered by the store
-- sequence and dead `lifetime` after now (the claim's block). A server killed while claims block leaves their tokens
-- behind; the oldest few are looked at here and the expired ones dropped, so they neither pile up nor get listed.
local token, agent, caps, lifetime = arg(1), arg(2), arg(3), tonumber(arg(4))
if not agent_exists(agent) then return fail(no_agent(agent)) end
for _, old in ipairs(redis.call('ZRANGE', K.waiters, 0, WAITER_SWEEP - 1)) do
  local w = redis.call('HMGET', wkey(old), 'agent', 'until')
  if waiter_expired(w[2]) then
    redis.call('ZREM', K.waiters, old)
    redis.call('DEL', wkey(old))
    if w[1] then redis.call('SREM', wskey(w[1]), old) end
  end
end
local previous = redis.call('HGET', wkey(token), 'agent')
if previous then redis.call('SREM', wskey(previous), token) end
local seq = redis.call('INCR', K.seq)
redis.call('ZADD', K.waiters, seq, token)
redis.call('HSET', wkey(token), 'agent', agent, 'caps', caps, 'until', n2s(NOW + lifetime))
redis.call('SADD', wskey(agent), token)
return ok()
