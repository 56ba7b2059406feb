-- prioritize(task, level): moves a pending task to another priority level, in the place it would hold had it been
-- submitted with it: FIFO by its sequence within the new level; with aging, the age it has is kept.
local id, level = arg(1), tonumber(arg(2))
if not task_exists(id) then return fail(no_task(id)) end
local k = tkey(id)
local t = redis.call('HMGET', k, 'status', 'prio', 'seq', 'score')
if t[1] ~= 'pending' then
  return fail(err('conflict', 'invalid_transition',
    'task ' .. id .. ' is ' .. t[1] .. '; only pending tasks can be prioritized'))
end
local old = tonumber(t[2])
if old ~= level then
  dequeue(id)
  local score
  if CFG.aging then
    -- The score is `enqueued + level·aging`: keep the age, change the level.
    score = tonumber(t[4]) - old * CFG.aging + level * CFG.aging
  else
    score = score_of(level, tonumber(t[3]))
  end
  redis.call('HSET', k, 'prio', level, 'score', n2s(score))
  redis.call('HINCRBY', K.stats, 'prio:' .. PRIORITY[old], -1)
  redis.call('HINCRBY', K.stats, 'prio:' .. PRIORITY[level], 1)
  enqueue(id)
  emit('task_prioritized', id, nil, json({ from = PRIORITY[old], to = PRIORITY[level] }))
end
return ok(task_view(id))
