-- decisions_append(keep, per_task, ttl_ms, n, (json, task_id) * n): appends plugin decisions to the capped stream
-- `decisions` (about `keep` entries kept) and each task's id to its own capped list (`per_task` newest, expiring
-- `ttl_ms` after its last decision): the record is written once, the task's list only points at it. Ids are
-- `<store ms>-<seq>`, after the stream's last (so `since` and retention read the store's clock, and a clock that
-- steps back cannot make XADD refuse). Answers the ids given.
local keep, per_task, ttl, n = tonumber(arg(1)), tonumber(arg(2)), tonumber(arg(3)), tonumber(arg(4))
local stream = P .. 'decisions'
local ms, seq = NOW, 0
local top = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
if top then
  local top_ms, top_seq = string.match(top[1], '^(%d+)-(%d+)$')
  top_ms, top_seq = tonumber(top_ms), tonumber(top_seq)
  if top_ms >= ms then ms, seq = top_ms, top_seq + 1 end
end
local ids = {}
for i = 0, n - 1 do
  local record, task = arg(5 + 2 * i), arg(6 + 2 * i)
  local id = n2s(ms) .. '-' .. n2s(seq + i)
  redis.call('XADD', stream, 'MAXLEN', '~', keep, id, 'd', record)
  if task ~= '' then
    local list = P .. 'decisions:task:' .. task
    redis.call('RPUSH', list, id)
    redis.call('LTRIM', list, -per_task, -1)
    redis.call('PEXPIRE', list, ttl)
  end
  table.insert(ids, id)
end
return ok(ids)
