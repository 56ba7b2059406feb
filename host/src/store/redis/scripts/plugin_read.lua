-- plugin_read(name, with_bytes): {record, history, bytes?} of one plugin name, or of every name when name is ''.
-- with_bytes is '1' for the upload's bytes, 'candidate' for the staged candidate's.
local name, with_bytes = arg(1), arg(2)
local function one(n)
  local key = P .. 'plugin:' .. n
  local raw = redis.call('HGET', key, 'record')
  if not raw then return nil end
  local out = { raw, redis.call('LRANGE', key .. ':history', 0, 99) }
  if with_bytes == '1' then table.insert(out, redis.call('HGET', key, 'bytes') or '') end
  if with_bytes == 'candidate' then table.insert(out, redis.call('HGET', key, 'candidate_bytes') or '') end
  return out
end
local found = {}
if name ~= '' then
  local record = one(name)
  if record then table.insert(found, record) end
else
  local names = redis.call('SMEMBERS', P .. 'plugins')
  table.sort(names)
  for _, n in ipairs(names) do
    local record = one(n)
    if record then table.insert(found, record) end
  end
end
return ok(found)
