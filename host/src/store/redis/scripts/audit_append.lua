-- audit_append(expected_seq, count, then per entry: seq, JSON; last: the new end's hash): appends entries the host
-- chained after `expected_seq`, only if the log still ends there (memory.rs `append_audit`). '1' | '0'.
local expected, count = tonumber(arg(1)), tonumber(arg(2))
local head = tonumber(redis.call('HGET', K.audit_head, 'seq') or '0')
if head ~= expected then return ok('0') end
local fields = {}
for i = 1, count do
  table.insert(fields, arg(2 + 2 * i - 1))
  table.insert(fields, arg(2 + 2 * i))
end
redis.call('HSET', K.audit_entries, unpack(fields))
redis.call('HSET', K.audit_head, 'seq', n2s(expected + count), 'hash', arg(3 + 2 * count))
return ok('1')
