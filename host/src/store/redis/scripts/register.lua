-- register(id, caps, model, provider, metadata, max, status, session|'', fresh_session, health_url?, has_url):
-- upsert; a different session revokes the old session's leases and waiters. Body after lib.lua.
local id, caps, model, provider, metadata = arg(1), arg(2), arg(3), arg(4), arg(5)
local max, status, session, fresh, url, has_url = arg(6), arg(7), arg(8), arg(9), arg(10), arg(11) == '1'
local k = akey(id)
local existing = agent_exists(id)
local restarted = false
if existing then
  local live = redis.call('HGET', k, 'session')
  if session ~= '' and session ~= live then
    lose_all(id, 'the agent registered again with a new session')
    -- The old session's blocked claims must not receive work meant for the new one.
    remove_waiters_of(id)
    restarted = true
  end
  mark(id)
  redis.call('HSET', k, 'caps', caps, 'model', model, 'provider', provider, 'metadata', metadata, 'max', max)
  if has_url then redis.call('HSET', k, 'health_url', url) else redis.call('HDEL', k, 'health_url') end
  if session ~= '' then redis.call('HSET', k, 'session', session) end
  agent_changed(id)
  -- Registering again is a fresh start: anything but ready or busy takes the status it registers with.
  local current = redis.call('HGET', k, 'status')
  if current ~= 'ready' and current ~= 'busy' then set_agent_status(id, status) end
  -- A fresh start for health too; the breaker keeps its state (recent failures, not the registration).
  redis.call('HSET', k, 'h_byprobe', '0', 'h_status', 'unknown', 'h_fails', '0')
  agent_changed(id)
else
  -- Marked before it exists (it counts for nothing yet), so that the end of the script counts it.
  mark(id)
  if session == '' then session = fresh end
  -- The fields every step reads first (lib.lua `AGENT_FIELDS`): a small hash finds a field by scanning from the start.
  redis.call('HSET', k, 'status', status, 'session', session, 'max', max, 'paused', '0', 'h_status', 'unknown',
    'b_state', 'closed', 'b_opened', '0', 'caps', caps, 'provider', provider, 'completed', '0', 'latency', '0',
    'failed', '0', 'id', id, 'model', model, 'metadata', metadata, 'registered', NOW_S, 'h_fails', '0',
    'h_message', '', 'h_byprobe', '0')
  if has_url then redis.call('HSET', k, 'health_url', url) end
  agent_changed(id)
  redis.call('ZADD', K.agents, 0, id)
  redis.call('HSET', K.beats, id, NOW_S)
  redis.call('ZADD', K.expiry, NOW_S, id)
end
local registered_status = redis.call('HGET', k, 'status')
touch(id)
-- A new `max` may make a ready agent full, or a busy one free.
refresh_capacity(id)
if registered_status == 'starting' then
  -- touch makes a claiming agent ready; a registration keeps the status the agent reported.
  set_agent_status(id, 'starting')
end
emit(restarted and 'agent_restarted' or 'agent_registered', nil, id, json({ created = not existing }))
return ok(agent_view(id), existing and '0' or '1', restarted and '1' or '0', REQUEUED)
