-- peek(caps, limit): the next pending tasks the capabilities match, in claim order, taking none.
local caps = cap_set(arg(1))
local limit = tonumber(arg(2))
local skip, views = {}, {}
while #views < limit do
  local id = best_for(caps, skip)
  if not id then break end
  table.insert(views, task_view(id))
  skip[id] = true
end
return ok(views)
