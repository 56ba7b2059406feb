-- schedule_change(op, id, ...): the schedule transitions (memory.rs `put_schedule`, `delete_schedule`,
-- `advance_schedule`).
--   put id definition next ('' = none) replace_next ('1'|'0') max → the record
--   delete id → '1' | '0'
--   advance id from next ('' = none) last_tick ('' = none) last_task ('' = none) error ('' = none) runs skipped
--     → '1' | '0' (the compare-and-set on the next tick)
local op, id = arg(1), arg(2)
local k = skey(id)
local function set_next(next)
  if next == '' then
    redis.call('HDEL', k, 'next')
    redis.call('ZREM', K.schedules_due, id)
  else
    redis.call('HSET', k, 'next', next)
    redis.call('ZADD', K.schedules_due, next, id)
  end
end

if op == 'put' then
  local definition, next, replace_next, max = arg(3), arg(4), arg(5), tonumber(arg(6))
  if redis.call('EXISTS', k) == 0 then
    if redis.call('ZCARD', K.schedules) >= max then
      return fail(err('conflict', 'too_many_schedules',
        'the store keeps at most ' .. max .. ' schedules; delete some first'))
    end
    redis.call('HSET', k, 'id', id, 'runs', '0', 'skipped', '0')
    redis.call('ZADD', K.schedules, 0, id)
    replace_next = '1'
  end
  redis.call('HSET', k, 'def', definition)
  if replace_next == '1' then set_next(next) end
  return ok(redis.call('HGETALL', k))
elseif op == 'delete' then
  if redis.call('DEL', k) == 0 then return ok('0') end
  redis.call('ZREM', K.schedules, id)
  redis.call('ZREM', K.schedules_due, id)
  return ok('1')
else -- advance
  local from, next, last_tick, last_task, why = arg(3), arg(4), arg(5), arg(6), arg(7)
  if redis.call('HGET', k, 'next') ~= from then return ok('0') end
  set_next(next)
  if last_tick ~= '' then
    redis.call('HSET', k, 'last', last_tick)
    if last_task ~= '' then redis.call('HSET', k, 'last_task', last_task) else redis.call('HDEL', k, 'last_task') end
  end
  if why ~= '' then redis.call('HSET', k, 'last_error', why) else redis.call('HDEL', k, 'last_error') end
  redis.call('HINCRBY', k, 'runs', tonumber(arg(8)))
  redis.call('HINCRBY', k, 'skipped', tonumber(arg(9)))
  return ok('1')
end
