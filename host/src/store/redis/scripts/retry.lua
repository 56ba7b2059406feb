-- retry(task): manual retry of a failed, timed-out or cancelled task: back to pending, retries reset.
local id = arg(1)
if not task_exists(id) then return fail(no_task(id)) end
local k = tkey(id)
local t = redis.call('HMGET', k, 'status', 'prio', 'seq')
local status = t[1]
if status ~= 'failed' and status ~= 'timeout' and status ~= 'cancelled' then
  return fail(err('conflict', 'invalid_transition',
    'task ' .. id .. ' is ' .. status .. '; only failed, timed-out or cancelled tasks can be retried'))
end
redis.call('HSET', k, 'retries', '0', 'unfenced', '0')
redis.call('HINCRBY', k, 'manual', 1)
redis.call('HDEL', k, 'result', 'error', 'completed', 'outcome_lease', 'avail')
if CFG.aging then
  -- With aging, a manual retry is new work: it ages from now, not from its first submission.
  redis.call('HSET', k, 'score', n2s(score_of(tonumber(t[2]), tonumber(t[3]))))
end
set_status(id, 'pending')
enqueue(id)
emit('task_retried', id, nil, json({ manual = true }))
return ok(task_view(id))
