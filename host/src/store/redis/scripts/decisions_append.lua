-- decisions_append(keep, per_task, ttl_ms, n, (json, task_id) * n): appends plugin decisions to the capped stream
-- `decisions` (about `keep` entries kept) and each task's id to its own capped list (`per_task` newest, expiring
-- `ttl_ms` after its last decision): the record is written once, the task's list only points at it. Ids are
-- `<store ms>-<seq>`, after the stream's last-generated id (so `since` and retention read the store's clock, and
-- a clock that steps back cannot make XADD refuse). Answers the ids given.
local keep, per_task, ttl, n = tonumber(arg(1)), tonumber(arg(2)), tonumber(arg(3)), tonumber(arg(4))
local stream = P .. 'decisions'
local ms, seq = NOW, 0
-- After the last id the stream ever gave (not its newest entry: retention may have emptied it).
local last = nil
if redis.call('EXISTS', stream) == 1 then
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
end
if last then
  local last_ms, last_seq = string.match(last, '^(%d+)-(%d+)$')
  last_ms, last_seq = tonumber(last_ms), tonumber(last_seq)
  if last_ms >= ms then ms, seq = last_ms, last_seq + 1 end
end
local ids = {}
for i = 0, n - 1 do
  local record, task = arg(5 + 2 * i), arg(6 + 2 * i)
  local id = n2s(ms) .. '-' .. n2s(seq + i)
  redis.call('XADD', stream, 'MAXLEN', '~', keep, id, 'd', record)
  if task ~= '' then
    local list = P .. 'decisions:task:' .. task
    -- Trimmed only past its cap: most tasks have one decision.
    if redis.call('RPUSH', list, id) > per_task then redis.call('LTRIM', list, -per_task, -1) end
    redis.call('PEXPIRE', list, ttl)
  end
  table.insert(ids, id)
end
return ok(ids)
