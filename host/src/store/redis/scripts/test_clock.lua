-- test_clock(mode, ms): TEST ONLY. 'pin' pins the store clock at ms (scripts read it instead of TIME); 'advance'
-- moves a pinned clock forward by ms, or else adds ms to the offset scripts add to TIME; 'clear' removes both.
local mode, ms = arg(1), arg(2)
if mode == 'pin' then
  redis.call('HSET', K.test_clock, 'pinned', ms)
  redis.call('HDEL', K.test_clock, 'offset')
elseif mode == 'advance' then
  if redis.call('HEXISTS', K.test_clock, 'pinned') == 1 then
    redis.call('HINCRBY', K.test_clock, 'pinned', ms)
  else
    redis.call('HINCRBY', K.test_clock, 'offset', ms)
  end
else
  redis.call('DEL', K.test_clock)
end
read_clock()
return ok()
