-- stats(): the task counters the transitions keep, and the agents counted when asked, each by its standing
-- (lib.lua `standing_of`, the clock of this read), as the memory store counts them. A read.
local agents, names = {}, {}
local function count(name)
  if not agents[name] then
    agents[name] = 0
    table.insert(names, name)
  end
  agents[name] = agents[name] + 1
end
for _, id in ipairs(redis.call('ZRANGE', K.agents, '0', '-1')) do
  local s = standing_of(id)
  if s then
    count('total')
    count('status:' .. s[1])
    count('provider:' .. (s[2] or ''))
    count('health:' .. (s[3] or ''))
    for cap in pairs(cap_set(s[4])) do count('cap:' .. cap) end
    if s[5] then count('open_breakers') end
    if s[6] then count('available') end
  end
end
local counted = {}
for _, name in ipairs(names) do
  table.insert(counted, name)
  table.insert(counted, n2s(agents[name]))
end
return ok(redis.call('HGETALL', K.stats), counted, n2s(redis.call('SCARD', K.sigs)), n2s(redis.call('ZCARD', K.waiters)))
