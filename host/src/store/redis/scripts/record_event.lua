-- record_event(kind, task|'', data JSON): appends an event no transition makes (a deliberation's progress).
emit(arg(1), arg(2) ~= '' and arg(2) or nil, nil, arg(3))
return ok()
