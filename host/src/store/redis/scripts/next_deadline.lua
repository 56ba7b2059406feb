-- next_deadline(): the earliest lease deadline, heartbeat expiry or backoff end ('' when none). A read.
local best = nil
for _, key in ipairs({ K.leases, K.expiry, K.delayed }) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #first > 0 then
    local at = tonumber(first[2])
    if best == nil or at < best then best = at end
  end
end
return ok(best and n2s(best) or '')
