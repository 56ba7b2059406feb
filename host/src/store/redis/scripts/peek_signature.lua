-- peek_signature(signature, limit): the next pending tasks whose required capabilities are exactly `signature`, in
-- claim order, taking none (memory.rs `peek_signature`).
local views = {}
for _, m in ipairs(redis.call('ZRANGE', rkey(arg(1)), 0, tonumber(arg(2)) - 1)) do
  table.insert(views, task_view(member_id(m)))
end
return ok(views)
