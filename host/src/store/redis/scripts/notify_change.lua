-- notify_change(op, ...): the notification transitions (memory/notifications.rs).
--   put_channel id json max → 'ok'                 (the first channel moves the cursor to the newest event)
--   delete_channel id → '1' | '0'
--   enqueue from ('' = none) to count [id channel message]*count → '1' | '0' (the compare-and-set on the cursor)
--   claim limit lease_ms → the leased deliveries' hashes, then ms until the next one left is due ('': none queued)
--   finish id attempt outcome ('sent'|'retry'|'dead') http_status ('' = none) error delay_ms sent_kept dead_kept
--     → '1' | '0' (the attempt's lease was lost)
--   retry id → the delivery's hash | {} (no such delivery); `attempts` goes on counting (it fences reports), `base`
--     records where this round of attempts starts
local op = arg(1)

-- Counters of existing channels only: a deleted channel's last deliveries must not bring its counters back.
local function tally(channel, field)
  if redis.call('HEXISTS', K.notify_channels, channel) == 1 then redis.call('HINCRBY', nfkey(channel), field, 1) end
end

local function forget(id)
  redis.call('DEL', ndkey(id))
  redis.call('ZREM', K.notify_all, id)
end

if op == 'put_channel' then
  local id, definition, max = arg(2), arg(3), tonumber(arg(4))
  if redis.call('HEXISTS', K.notify_channels, id) == 0 then
    local count = redis.call('HLEN', K.notify_channels)
    if count >= max then
      return fail(err('conflict', 'too_many_channels',
        'the store keeps at most ' .. max .. ' channels; delete some first'))
    end
    if count == 0 then
      local newest = redis.call('XREVRANGE', K.events, '+', '-', 'COUNT', 1)
      if #newest > 0 then redis.call('SET', K.notify_cursor, newest[1][1]) else redis.call('DEL', K.notify_cursor) end
    end
  end
  redis.call('HSET', K.notify_channels, id, definition)
  return ok('ok')
elseif op == 'delete_channel' then
  redis.call('DEL', nfkey(arg(2)))
  return ok(tostring(redis.call('HDEL', K.notify_channels, arg(2))))
elseif op == 'enqueue' then
  local from, to, count = arg(2), arg(3), tonumber(arg(4))
  if (redis.call('GET', K.notify_cursor) or '') ~= from then return ok('0') end
  redis.call('SET', K.notify_cursor, to)
  for i = 0, count - 1 do
    local id, channel, message = arg(5 + 3 * i), arg(6 + 3 * i), arg(7 + 3 * i)
    local k = ndkey(id)
    if redis.call('EXISTS', k) == 0 then
      local seq = n2s(redis.call('INCR', K.notify_seq))
      redis.call('HSET', k, 'id', id, 'channel', channel, 'message', message, 'status', 'pending', 'attempts', '0',
        'created', NOW_S, 'due', NOW_S, 'seq', seq)
      redis.call('ZADD', K.notify_due, NOW_S, id)
      redis.call('ZADD', K.notify_all, seq, id)
      tally(channel, 'enqueued')
    end
  end
  return ok('1')
elseif op == 'claim' then
  local limit, lease = tonumber(arg(2)), tonumber(arg(3))
  local claimed = {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', K.notify_due, '-inf', NOW_S, 'LIMIT', '0', n2s(limit))) do
    local k = ndkey(id)
    if redis.call('EXISTS', k) == 1 then
      redis.call('HINCRBY', k, 'attempts', 1)
      redis.call('HSET', k, 'status', 'sending', 'due', n2s(NOW + lease))
      redis.call('ZADD', K.notify_due, NOW + lease, id)
      table.insert(claimed, redis.call('HGETALL', k))
    else
      redis.call('ZREM', K.notify_due, id)
    end
  end
  -- When the next one left comes due ('' when none is queued): the sender sleeps until then.
  local next = redis.call('ZRANGE', K.notify_due, '0', '0', 'WITHSCORES')[2]
  return ok(claimed, next and n2s(math.max(0, tonumber(next) - NOW)) or '')
elseif op == 'finish' then
  local id, attempt, outcome, code, why = arg(2), arg(3), arg(4), arg(5), arg(6)
  local delay, sent_kept, dead_kept = tonumber(arg(7)), tonumber(arg(8)), tonumber(arg(9))
  local k = ndkey(id)
  local state = redis.call('HMGET', k, 'status', 'attempts', 'channel', 'seq')
  if state[1] ~= 'sending' or state[2] ~= attempt then return ok('0') end
  local channel = state[3]
  if code ~= '' then redis.call('HSET', k, 'code', code) else redis.call('HDEL', k, 'code') end
  if outcome == 'sent' then
    tally(channel, 'sent')
    redis.call('HSET', k, 'status', 'sent', 'delivered', NOW_S)
    redis.call('HDEL', k, 'due')
    redis.call('ZREM', K.notify_due, id)
    redis.call('RPUSH', K.notify_sent, id)
    while redis.call('LLEN', K.notify_sent) > sent_kept do forget(redis.call('LPOP', K.notify_sent)) end
    return ok('1')
  end
  tally(channel, 'failed')
  redis.call('HSET', k, 'error', why)
  if outcome == 'retry' then
    redis.call('HSET', k, 'status', 'pending', 'due', n2s(NOW + delay))
    redis.call('ZADD', K.notify_due, NOW + delay, id)
    return ok('1')
  end
  tally(channel, 'dead')
  redis.call('HSET', k, 'status', 'dead')
  redis.call('HDEL', k, 'due')
  redis.call('ZREM', K.notify_due, id)
  redis.call('ZADD', K.notify_dead, state[4], id)
  while redis.call('ZCARD', K.notify_dead) > dead_kept do
    local oldest = redis.call('ZPOPMIN', K.notify_dead)[1]
    local owner = redis.call('HGET', ndkey(oldest), 'channel')
    if owner then tally(owner, 'dropped') end
    forget(oldest)
  end
  return ok('1')
else -- retry
  local id = arg(2)
  local k = ndkey(id)
  local status = redis.call('HGET', k, 'status')
  if not status then return ok({}) end
  if status ~= 'dead' then
    return fail(err('conflict', 'not_a_dead_letter', 'delivery ' .. id .. ' is ' .. status .. ', not a dead letter'))
  end
  redis.call('ZREM', K.notify_dead, id)
  redis.call('HSET', k, 'status', 'pending', 'base', redis.call('HGET', k, 'attempts'), 'due', NOW_S)
  redis.call('ZADD', K.notify_due, NOW_S, id)
  return ok(redis.call('HGETALL', k))
end
