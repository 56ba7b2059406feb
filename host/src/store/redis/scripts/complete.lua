-- complete(count, then per outcome: task, fence kind, fence value, result JSON): each outcome stands alone (a
-- conflict on one does not undo the others). Answers per outcome {'ok', task} or {'err', kind, code, message}.
local count = tonumber(arg(1))
local results = {}
for i = 0, count - 1 do
  local id, kind, fence, result = arg(2 + i * 4), arg(3 + i * 4), arg(4 + i * 4), arg(5 + i * 4)
  local e = complete(id, kind, fence, result)
  if e then
    table.insert(results, { 'err', e[1], e[2], e[3] })
  else
    table.insert(results, { 'ok', task_view(id) })
  end
end
return ok(results)
