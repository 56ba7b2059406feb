-- plugin_change(name, action, by, sha256, manifest, size, bytes_base64, mode, percent, expected_sha256, detail): a
-- fleet-wide plugin change (uploaded, deleted, enabled, disabled, staged, promoted, rolled_back) with its history
-- entry and its `plugin_<action>` event, in one step. The record is one JSON document (`plugin:<name>` field
-- `record`), the upload's bytes sit beside it (field `bytes`, base64) and a staged candidate's too (field
-- `candidate_bytes`); the history is a capped list of JSON entries, newest first.
local name, action, by = arg(1), arg(2), arg(3)
local key = P .. 'plugin:' .. name
local history = key .. ':history'
local raw = redis.call('HGET', key, 'record')
local record
if raw then record = cjson.decode(raw) else record = { name = name, version = 0, enabled = true } end
if action == 'deleted' and not record.sha256 then return fail(err('plugin_not_found', '', name)) end
if action == 'promoted' or action == 'rolled_back' then
  local candidate = record.candidate
  if type(candidate) ~= 'table' then
    return fail(err('conflict', 'no_candidate', name .. ' has no shadow or canary version'))
  end
  if arg(10) ~= '' and arg(10) ~= candidate.sha256 then
    return fail(err('conflict', 'candidate_changed',
      name .. "'s candidate is now " .. candidate.sha256 .. ', not the version asked for'))
  end
  if action == 'promoted' and not redis.call('HGET', key, 'candidate_bytes') then
    return fail(err('conflict', 'no_candidate', name .. "'s candidate has no component stored"))
  end
end
record.version = record.version + 1
local detail = nil
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
elseif action == 'disabled' then
  record.enabled = false
elseif action == 'staged' then
  local candidate = { mode = arg(8), sha256 = arg(4), size = tonumber(arg(6)) }
  if arg(5) ~= '' then candidate.manifest = arg(5) end
  if arg(8) == 'canary' then candidate.percent = tonumber(arg(9)) end
  record.candidate = candidate
  redis.call('HSET', key, 'candidate_bytes', arg(7))
  detail = arg(11)
elseif action == 'promoted' then
  local candidate = record.candidate
  record.sha256, record.size, record.manifest = candidate.sha256, candidate.size, candidate.manifest
  record.candidate = nil
  redis.call('HSET', key, 'bytes', redis.call('HGET', key, 'candidate_bytes'))
  redis.call('HDEL', key, 'candidate_bytes')
else
  record.candidate = nil
  redis.call('HDEL', key, 'candidate_bytes')
  if arg(11) ~= '' then detail = arg(11) end
end
redis.call('HSET', key, 'record', cjson.encode(record))
redis.call('SADD', P .. 'plugins', name)
local entry = { version = record.version, action = action, by = by, at = NOW }
if record.sha256 then entry.sha256 = record.sha256 end
if detail then entry.detail = detail end
redis.call('LPUSH', history, cjson.encode(entry))
redis.call('LTRIM', history, 0, 99)
emit('plugin_' .. action, nil, nil, json({
  name = name, version = record.version, sha256 = record.sha256 or cjson.null, enabled = record.enabled,
}))
return ok(cjson.encode(record), redis.call('LRANGE', history, 0, 99))
