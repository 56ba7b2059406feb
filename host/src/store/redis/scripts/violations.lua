-- violations(limit): the newest policy violations, newest first.
return ok(redis.call('LRANGE', P .. 'violations', 0, tonumber(arg(1)) - 1))
