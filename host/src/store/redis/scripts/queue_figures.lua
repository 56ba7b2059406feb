-- queue_figures(): claimable tasks per live signature, the delayed count, when the longest-waiting task entered
-- pending, and the newest claim waits; each from its own index, never a scan of the backlog. A read.
local ready = {}
for _, sig in ipairs(redis.call('SMEMBERS', K.sigs)) do
  table.insert(ready, sig)
  table.insert(ready, n2s(redis.call('ZCARD', rkey(sig))))
end
local oldest = redis.call('ZRANGE', K.pending_since, 0, 0, 'WITHSCORES')
return ok(ready, n2s(redis.call('ZCARD', K.delayed)), oldest[2] or '', redis.call('LRANGE', K.claim_waits, 0, -1))
