-- offer(task, limit, after): the waiting claims a pending, due task may go to (lib.lua `offer`), after the waiting
-- place `after`; nothing when the task is not pending or not due. Writes only to drop stale waiting-set entries.
local id, limit, after = arg(1), tonumber(arg(2)), arg(3)
if not task_exists(id) then return ok({}) end
local t = redis.call('HMGET', tkey(id), 'status', 'avail', 'caps')
if t[1] ~= 'pending' or (t[2] and tonumber(t[2]) > NOW) then return ok({}) end
return ok(offer(t[3], limit, after))
