-- waiters_for(required caps, limit): live waiters whose capabilities cover `required`, oldest first. A read.
local required, limit = arg(1), tonumber(arg(2))
local found = {}
for _, token in ipairs(redis.call('ZRANGE', K.waiters, 0, -1)) do
  if #found >= limit then break end
  local w = redis.call('HMGET', wkey(token), 'agent', 'caps', 'until')
  if w[1] and not waiter_expired(w[3]) and subset(required, cap_set(w[2])) then table.insert(found, { token, w[1], w[2] }) end
end
return ok(found)
