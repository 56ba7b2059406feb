-- stats(): the counters the transitions keep. A read.
return ok(redis.call('HGETALL', K.stats), redis.call('HGETALL', K.agent_stats), n2s(redis.call('SCARD', K.sigs)),
  n2s(redis.call('ZCARD', K.waiters)))
