-- update_violation(id, status, note, by): a reviewer's status change on a kept violation, found by id in the capped
-- list (at most VIOLATIONS_KEPT entries, newest first) and rewritten in place; answers it, or nothing when no kept
-- violation has that id.
local id, status, note, by = arg(1), arg(2), arg(3), arg(4)
local key = P .. 'violations'
local kept = redis.call('LRANGE', key, 0, -1)
for index, encoded in ipairs(kept) do
  local v = cjson.decode(encoded)
  if v.id == id then
    v.status = status
    if note ~= '' then v.note = note else v.note = nil end
    v.updated_by = by
    v.updated_at = NOW
    local updated = cjson.encode(v)
    redis.call('LSET', key, index - 1, updated)
    return ok({ updated })
  end
end
return ok({})
