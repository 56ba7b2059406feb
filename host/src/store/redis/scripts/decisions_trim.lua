-- decisions_trim(before_ms): removes stream entries appended before that time (retention). Answers how many.
return ok(redis.call('XTRIM', P .. 'decisions', 'MINID', arg(1)))
