-- register_waiter(token, agent, caps): a blocked claim's single-use token, ordered by the store sequence.
local token, agent, caps = arg(1), arg(2), arg(3)
if not agent_exists(agent) then return fail(no_agent(agent)) end
local previous = redis.call('HGET', wkey(token), 'agent')
if previous then redis.call('SREM', wskey(previous), token) end
local seq = redis.call('INCR', K.seq)
redis.call('ZADD', K.waiters, seq, token)
redis.call('HSET', wkey(token), 'agent', agent, 'caps', caps)
redis.call('SADD', wskey(agent), token)
return ok()
