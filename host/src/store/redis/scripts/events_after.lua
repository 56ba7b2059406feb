-- events_after(after id|'', limit): the events after `after` (or from the oldest kept); {'gone'} when `after` is no
-- longer in the stream (the caller fell behind the cap). A read.
local after, limit = arg(1), tonumber(arg(2))
if after == '' then return ok('kept', redis.call('XRANGE', K.events, '-', '+', 'COUNT', limit)) end
if #redis.call('XRANGE', K.events, after, after) == 0 then return ok('gone') end
return ok('kept', redis.call('XRANGE', K.events, '(' .. after, '+', 'COUNT', limit))
