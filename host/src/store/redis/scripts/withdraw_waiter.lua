-- withdraw_waiter(token): '' if the token was unused (now dead), else the task a submit assigned through it, while
-- that grant still stands.
local token = arg(1)
if redis.call('ZREM', K.waiters, token) == 1 then
  local agent = redis.call('HGET', wkey(token), 'agent')
  if agent then redis.call('SREM', wskey(agent), token) end
  redis.call('DEL', wkey(token))
  return ok()
end
local consumed = redis.call('HGET', K.consumed, token)
if not consumed then return ok() end
redis.call('HDEL', K.consumed, token)
local id, lease = string.match(consumed, '^(%S+) (%S*)$')
if task_exists(id) and redis.call('HGET', tkey(id), 'lease') == lease then return ok(task_view(id)) end
return ok()
