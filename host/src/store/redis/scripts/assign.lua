-- assign(task, lease, any_waiter, tokens...): grants the task through the first token that can still take it (task
-- pending and due, token live, agent eligible and holding the capabilities); with any_waiter '1', then through any
-- live waiting claim that can, longest-waiting first. Answers {token, task view}, or nothing.

-- Grants `id` through `token` if it can; answers whether it did. `t`: the task's `GRANT_FIELDS`, read by the caller,
-- which calls this only for a pending task (nothing here changes the task unless it grants).
local function through(id, token, lease, t)
  local w = redis.call('HMGET', wkey(token), 'agent', 'caps', 'until')
  if not w[1] or redis.call('ZSCORE', K.waiters, token) == false then return false end
  local agent = w[1]
  if waiter_expired(w[3]) then
    -- Its claim is over: withdrawn by now, or its server died. Nobody would receive the task.
    remove_waiter(token, w)
    return false
  end
  -- The agent's row (lib.lua `agent_row`): its capabilities and what the eligibility rule looks at.
  local a = agent_row(agent)
  if not a.status then return false end
  -- The waiter's capabilities may have been narrowed by the claim, never widened past the registration.
  local claimable = (not t.avail or tonumber(t.avail) <= NOW)
      and subset(t.caps, cap_set(w[2])) and subset(t.caps, cap_set(a.caps))
  if not claimable then return false end
  -- An open breaker may be due to turn half-open: `eligible` makes that transition (with its event) first.
  if not eligible(agent) then return false end
  remove_waiter(token, w)
  dequeue(id, t)
  touch(agent)
  grant(id, agent, 'routed', lease, token, t)
  -- Answered at withdrawal for as long as the claim's token would have lived, and a second more (a claim woken with
  -- its task by this server never withdraws, so the record must go by itself).
  local ttl = math.max(tonumber(w[3]) - NOW, 0) + 1000
  redis.call('SET', P .. 'consumed:' .. token, id .. ' ' .. lease, 'PX', n2s(ttl))
  return true
end

local id, lease, any_waiter = arg(1), arg(2), arg(3) == '1'
local t = fields(tkey(id), GRANT_FIELDS)
if not t.status then return fail(no_task(id)) end
if t.status ~= 'pending' then return ok() end
local i = 4
while arg(i) do
  if through(id, arg(i), lease, t) then return ok(arg(i), task_view(id)) end
  i = i + 1
end
if any_waiter then
  local after = '0'
  while true do
    local page = covering(t.caps, after, 32)
    if #page == 0 then break end
    after = page[#page][1]
    for _, entry in ipairs(page) do
      if through(id, entry[2], lease, t) then return ok(entry[2], task_view(id)) end
    end
  end
end
return ok()
