-- server_alive(server_id, ttl_ms): records the server as alive until now + ttl, forgets expired ones, and answers
-- the live server ids, sorted (health probing divides the agents among them by rendezvous hash).
redis.call('ZADD', P .. 'servers', NOW + tonumber(arg(2)), arg(1))
redis.call('ZREMRANGEBYSCORE', P .. 'servers', '-inf', NOW)
local servers = redis.call('ZRANGE', P .. 'servers', 0, -1)
table.sort(servers)
return ok(servers)
