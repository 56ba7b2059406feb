-- plugin_change(name, action, by, sha256, manifest, size, bytes_base64): a fleet-wide plugin change (uploaded,
-- deleted, enabled, disabled) with its history entry and its `plugin_<action>` event, in one step. The record is
-- one JSON document (`plugin:<name>` field `record`), the upload's bytes sit beside it (field `bytes`, base64), the
-- history is a capped list of JSON entries, newest first.
local name, action, by = arg(1), arg(2), arg(3)
local key = P .. 'plugin:' .. name
local history = key .. ':history'
local raw = redis.call('HGET', key, 'record')
local record
if raw then record = cjson.decode(raw) else record = { name = name, version = 0, enabled = true } end
if action == 'deleted' and not record.sha256 then return fail(err('plugin_not_found', '', name)) end
record.version = record.version + 1
if action == 'uploaded' then
  record.sha256 = arg(4)
  if arg(5) ~= '' then record.manifest = arg(5) else record.manifest = nil end
  record.size = tonumber(arg(6))
  redis.call('HSET', key, 'bytes', arg(7))
elseif action == 'deleted' then
  record.sha256, record.manifest, record.size = nil, nil, nil
  redis.call('HDEL', key, 'bytes')
elseif action == 'enabled' then
  record.enabled = true
else
  record.enabled = false
end
redis.call('HSET', key, 'record', cjson.encode(record))
redis.call('SADD', P .. 'plugins', name)
local entry = { version = record.version, action = action, by = by, at = NOW }
if record.sha256 then entry.sha256 = record.sha256 end
redis.call('LPUSH', history, cjson.encode(entry))
redis.call('LTRIM', history, 0, 99)
emit('plugin_' .. action, nil, nil, json({
  name = name, version = record.version, sha256 = record.sha256 or cjson.null, enabled = record.enabled,
}))
return ok(cjson.encode(record), redis.call('LRANGE', history, 0, 99))
