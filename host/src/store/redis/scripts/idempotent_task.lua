-- idempotent_task(submitted_by, key): the task a live idempotency key created, and its fingerprint. A read.
local by, key = arg(1), arg(2)
local found = redis.call('HGET', K.idem, string.len(by) .. ':' .. by .. key)
if not found then return ok() end
local task, fingerprint, expires = string.match(found, '^(%S+) (%S+) (%d+)$')
if tonumber(expires) <= NOW then return ok() end
return ok(task, fingerprint)
