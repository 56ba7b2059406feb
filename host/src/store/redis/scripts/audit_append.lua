-- audit_append(expected_seq, count, then per entry: seq, JSON; last: the new end's hash): appends entries the host
-- chained after `expected_seq`, only if the log still ends there (memory.rs `append_audit`). '1', or '0' and the
-- end another server's append left (seq, hash; as audit_read 'head'), to chain again from without a read.
local expected, count = tonumber(arg(1)), tonumber(arg(2))
local head = redis.call('HMGET', K.audit_head, 'seq', 'hash')
if tonumber(head[1] or '0') ~= expected then return ok('0', head[1] or '0', head[2] or '') end
local fields = {}
for i = 1, count do
  table.insert(fields, arg(2 + 2 * i - 1))
  table.insert(fields, arg(2 + 2 * i))
end
redis.call('HSET', K.audit_entries, unpack(fields))
redis.call('HSET', K.audit_head, 'seq', n2s(expected + count), 'hash', arg(3 + 2 * count))
return ok('1')
