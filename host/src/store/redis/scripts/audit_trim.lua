-- audit_trim(seq, checkpoint JSON): removes the audit entries up to `seq` and keeps the checkpoint in their place
-- (memory.rs `trim_audit`). '1' | '0' (already as far, past the end, or more than 1,000 entries at once).
local seq = tonumber(arg(1))
local current = redis.call('GET', K.audit_checkpoint)
local base = 0
if current then base = tonumber(cjson.decode(current).seq) end
local head = tonumber(redis.call('HGET', K.audit_head, 'seq') or '0')
if seq <= base or seq > head or seq - base > 1000 then return ok('0') end
local fields = {}
for s = base + 1, seq do table.insert(fields, n2s(s)) end
redis.call('HDEL', K.audit_entries, unpack(fields))
redis.call('SET', K.audit_checkpoint, arg(2))
return ok('1')
