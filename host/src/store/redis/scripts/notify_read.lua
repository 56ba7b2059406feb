-- notify_read(op, ...): the channels' definitions (`channels`), the delivery cursor (`cursor`, '' = none), one
-- delivery (`one id`), deliveries (`list status ('' = any) limit`: newest first, or soonest due first for pending
-- and sending ones), and each channel's counters (`figures` → {channel, counter list}*). A read.
local op = arg(1)
if op == 'channels' then
  return ok(redis.call('HVALS', K.notify_channels))
elseif op == 'cursor' then
  return ok(redis.call('GET', K.notify_cursor) or '')
elseif op == 'one' then
  return ok({ redis.call('HGETALL', ndkey(arg(2))) })
elseif op == 'figures' then
  local out = {}
  for _, channel in ipairs(redis.call('HKEYS', K.notify_channels)) do
    table.insert(out, channel)
    table.insert(out, redis.call('HGETALL', nfkey(channel)))
  end
  return ok(out)
end
-- list
local status, limit = arg(2), tonumber(arg(3))
local out = {}
local function take(ids)
  for _, id in ipairs(ids) do
    if #out >= limit then return end
    local record = redis.call('HGETALL', ndkey(id))
    if #record > 0 then
      local fields = {}
      for i = 1, #record, 2 do fields[record[i]] = record[i + 1] end
      if status == '' or fields.status == status then table.insert(out, record) end
    end
  end
end
if status == 'dead' then
  take(redis.call('ZREVRANGE', K.notify_dead, 0, limit - 1))
elseif status == 'sent' then
  local ids = redis.call('LRANGE', K.notify_sent, -limit, -1)
  local newest_first = {}
  for i = #ids, 1, -1 do table.insert(newest_first, ids[i]) end
  take(newest_first)
elseif status == 'pending' or status == 'sending' then
  -- Both wait in the due index; a page at a time until enough of the asked status are found.
  local page, from = 200, 0
  while #out < limit do
    local ids = redis.call('ZRANGE', K.notify_due, from, from + page - 1)
    if #ids == 0 then break end
    take(ids)
    from = from + page
  end
else
  take(redis.call('ZREVRANGE', K.notify_all, 0, limit - 1))
end
return ok(out)
