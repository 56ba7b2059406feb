-- complete(count, then per outcome: task, fence kind, fence value, result JSON, reported latency ms|''): each outcome
-- stands alone (a conflict on one does not undo the others). Answers per outcome {'ok', task} or {'err', kind, code, message}.
local count = tonumber(arg(1))
local results = {}
for i = 0, count - 1 do
  local at = 2 + i * 5
  local id, kind, fence, result, reported = arg(at), arg(at + 1), arg(at + 2), arg(at + 3), arg(at + 4)
  local e = complete(id, kind, fence, result, reported)
  if e then
    table.insert(results, { 'err', e[1], e[2], e[3] })
  else
    table.insert(results, { 'ok', task_view(id) })
  end
end
return ok(results)
