-- record_violations(n, then policy, stage, decision, reason, task, agent for each): policy denials and warnings,
-- each with a fleet-wide id (`viol_<n>`), kept newest first in a capped list, each with its `policy_violation`
-- event.
local count = tonumber(arg(1))
local recorded = {}
for i = 0, count - 1 do
  local base = 1 + i * 6
  local id = 'viol_' .. n2s(redis.call('INCR', P .. 'violation-seq'))
  local v = { id = id, policy = arg(base + 1), stage = arg(base + 2), decision = arg(base + 3),
              reason = arg(base + 4), time = NOW }
  local task, agent = arg(base + 5), arg(base + 6)
  if task ~= '' then v.task_id = task else task = nil end
  if agent ~= '' then v.agent_id = agent else agent = nil end
  local encoded = cjson.encode(v)
  redis.call('LPUSH', P .. 'violations', encoded)
  emit('policy_violation', task, agent, json({
    policy = v.policy, stage = v.stage, decision = v.decision, reason = v.reason, violation_id = id,
  }))
  table.insert(recorded, encoded)
end
redis.call('LTRIM', P .. 'violations', 0, 9999)
return ok(recorded)
