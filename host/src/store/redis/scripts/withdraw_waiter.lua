-- withdraw_waiter(token): '' if the token was unused (now dead), else the task a submit assigned through it, while
-- that grant still stands.
local token = arg(1)
if redis.call('ZSCORE', K.waiters, token) then
  remove_waiter(token)
  return ok()
end
local key = P .. 'consumed:' .. token
local consumed = redis.call('GET', key)
if not consumed then return ok() end
redis.call('DEL', key)
local id, lease = string.match(consumed, '^(%S+) (%S*)$')
if task_exists(id) and redis.call('HGET', tkey(id), 'lease') == lease then return ok(task_view(id)) end
return ok()
