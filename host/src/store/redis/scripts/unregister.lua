-- unregister(id): the agent's tasks are requeued (counting a retry) or failed with agent_lost; the record goes.
local id = arg(1)
if not agent_exists(id) then return fail(no_agent(id)) end
lose_all(id, 'the agent unregistered')
remove_waiters_of(id)
-- Taken out of the counters; nothing is added back once the record is gone.
mark(id)
redis.call('DEL', akey(id), lkey(id), revkey(id), fkey(id), wskey(id))
agent_changed(id)
redis.call('ZREM', K.agents, id)
redis.call('ZREM', K.expiry, id)
redis.call('ZREM', K.offline, id)
redis.call('HDEL', K.beats, id)
emit('agent_unregistered', nil, id, '{}')
return ok(REQUEUED)
