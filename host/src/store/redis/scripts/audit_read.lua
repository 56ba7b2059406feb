-- audit_read('head') → seq, hash; audit_read('checkpoint') → its JSON or ''; audit_read('range', from, to) → the JSON of entries from..to (nil where missing).
-- A read.
if arg(1) == 'head' then
  local head = redis.call('HMGET', K.audit_head, 'seq', 'hash')
  return ok(head[1] or '0', head[2] or '')
end
if arg(1) == 'checkpoint' then return ok(redis.call('GET', K.audit_checkpoint) or '') end
local from, to = tonumber(arg(2)), tonumber(arg(3))
local seqs = {}
for seq = from, to do table.insert(seqs, n2s(seq)) end
if #seqs == 0 then return ok({}) end
return ok(redis.call('HMGET', K.audit_entries, unpack(seqs)))
