-- The shared prelude of every store script: the key layout, the clock, events, counters and the helpers that mirror
-- the memory store's transition steps (memory.rs `Tx`). Each script is this prelude followed by one transition body,
-- run by EVALSHA as one atomic step.
--
-- Calling convention: KEYS[1] is the tagged prefix (`<prefix>{main}:`), so every key below is derived from it and
-- lives in one cluster slot. ARGV[1] is the server's id and ARGV[2] the rest of the store configuration in one value
-- (`config_args` in mod.rs); a body reads its own arguments with `arg(i)`. Bodies never raise on a refused
-- transition: they return `fail(...)`, so everything the script changed before the refusal stays consistent (a
-- transition checks before it changes, like memory's).
--
-- The prelude is loaded once as a Redis function library (each body a function) or, on a Redis without functions,
-- run whole before its body by EVALSHA (scripts.rs). Either way a call starts with `begin` (at the end of this
-- file), which sets the call's state below; nothing else of a call outlives it.

-- NOW_S: NOW as the decimal string every write of it uses (see `n2s`).
local KEYS, ARGV, P, CFG, K, NOW, NOW_S, PINNED

-- The configuration from the server's id and its other values joined by `|` (in `config_args`' order). One value
-- rather than thirteen: every argument of every call is made into a Lua string, which is most of what an argument
-- costs, and an unchanged configuration is then recognised by one comparison.
local function config(server, joined)
  local v = {}
  for value in string.gmatch(joined .. '|', '([^|]*)|') do v[#v + 1] = value end
  return {
    server = server,
    heartbeat_timeout = tonumber(v[1]),
    heartbeat_interval = tonumber(v[2]),
    max_signatures = tonumber(v[3]),
    aging = tonumber(v[4]), -- nil ('') = strict priority
    backoff_base = tonumber(v[5]),
    backoff_max = tonumber(v[6]),
    event_buffer = v[7],
    idempotency_ttl = tonumber(v[8]),
    breaker_threshold = tonumber(v[9]),
    breaker_window = tonumber(v[10]),
    breaker_cooldown = tonumber(v[11]),
    max_pending = tonumber(v[12]), -- 0 = no limit
    event_fields = v[13] == 'fields', -- REDIS_EVENT_FORMAT: events as separate fields, for older readers
  }
end
local ARG_BASE = 2
-- Parsed configurations by server id (ARGV[1]): {the joined values parsed, the configuration}. Every server of a fleet
-- calls the same library with its own id; ids change at every restart, so the memory starts again past a bound.
local CONFIGS = {}
local CONFIGS_KEPT = 64
local configs_count = 0

-- The call's configuration: parsed again only when the server's values differ from the ones it last parsed (a
-- loaded library outlives its calls; under EVALSHA every call starts afresh and parses).
local function config_of(argv)
  local known = CONFIGS[argv[1]]
  if known then
    if known[1] == argv[2] then return known[2] end
  elseif configs_count >= CONFIGS_KEPT then
    CONFIGS, configs_count = {}, 0
  end
  local parsed = config(argv[1], argv[2])
  if not known then configs_count = configs_count + 1 end
  CONFIGS[argv[1]] = { argv[2], parsed }
  return parsed
end
local function arg(i) return ARGV[ARG_BASE + i] end

-- Keys (docs/REDIS.md lists each with its type and the scripts that touch it).
local function key_table(p)
  return {
    seq = p .. 'seq',
    sigs = p .. 'sigs',
    delayed = p .. 'delayed',
    leases = p .. 'leases',
    tasks = p .. 'tasks',
    finished = p .. 'finished',
    pending_since = p .. 'pending-since',
    claim_waits = p .. 'claim-waits',
    audit_entries = p .. 'audit:entries',
    audit_head = p .. 'audit:head',
    audit_checkpoint = p .. 'audit:checkpoint',
    schedules = p .. 'schedules',
    schedules_due = p .. 'schedules:due',
    notify_channels = p .. 'notify:channels',
    notify_cursor = p .. 'notify:cursor',
    notify_seq = p .. 'notify:seq',
    notify_all = p .. 'notify:all',
    notify_due = p .. 'notify:due',
    notify_sent = p .. 'notify:sent',
    notify_dead = p .. 'notify:dead',
    agents = p .. 'agents',
    expiry = p .. 'expiry',
    offline = p .. 'offline',
    beats = p .. 'beats',
    waiters = p .. 'waiters',
    waiter_agents = p .. 'waiter-agents',
    agent_numbers = p .. 'agent-numbers',
    waiting_sets = p .. 'waiting-sets',
    consumed = p .. 'consumed',
    idem = p .. 'idem',
    idem_exp = p .. 'idem:exp',
    stats = p .. 'stats',
    agent_stats = p .. 'agent-stats',
    events = p .. 'events',
    event_count = p .. 'event-count',
    test_clock = p .. 'test:clock',
  }
end
-- Built once per prefix while a function library stays loaded.
local KEY_TABLES = {}
local function tkey(id) return P .. 'task:' .. id end
local function rkey(sig) return P .. 'ready:' .. sig end
local function akey(id) return P .. 'agent:' .. id end
local function lkey(id) return P .. 'agent:' .. id .. ':leases' end
local function revkey(id) return P .. 'agent:' .. id .. ':revoked' end
local function fkey(id) return P .. 'agent:' .. id .. ':failures' end
local function wskey(id) return P .. 'agent:' .. id .. ':waiters' end
local function wkey(token) return P .. 'waiter:' .. token end
local function skey(id) return P .. 'schedule:' .. id end
-- A notification delivery, and one channel's counters.
local function ndkey(id) return P .. 'notify:d:' .. id end
local function nfkey(channel) return P .. 'notify:figures:' .. channel end
-- Waiting claims of one capability set, by waiting order (the store sequence).
local function gkey(caps) return P .. 'waiting:' .. caps end

-- Integers as decimal strings: Lua numbers are doubles, and `tostring` would print large ones in exponent form.
-- Arguments of `redis.call` are handed over as strings for the same reason and for speed: Redis 7.0 prints a
-- number argument as a float (`%.17g`), which cost several times the integer formatting on every task's way.
local function n2s(x) return string.format('%d', x) end

-- The store clock: Redis TIME, unless the test-only clock (`test:clock`) pins it or shifts it. The lines between
-- the markers exist only in builds with the `test-clock` feature (scripts.rs removes them otherwise).
local function clock()
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  -- test-clock:begin
  local tc = redis.call('HMGET', K.test_clock, 'pinned', 'offset')
  if tc[1] then return tonumber(tc[1]), '1' end
  if tc[2] then now = now + tonumber(tc[2]) end
  -- test-clock:end
  return now, '0'
end

-- Sets the call's time (NOW, NOW_S, PINNED) from the clock.
local function read_clock()
  NOW, PINNED = clock()
  NOW_S = n2s(NOW)
end

-- Randomness comes from the host (a script's own PRNG is seeded the same on every call): a Park-Miller generator
-- over a host-drawn seed, for backoff jitter. Lease ids are drawn by the host in full (128 bits).
local SEED = 1
local function seed(s) SEED = math.max(1, math.floor(tonumber(s) or 1) % 2147483647) end
local function random()
  SEED = (SEED * 16807) % 2147483647
  return SEED / 2147483647
end

local PRIORITY = { [0] = 'critical', [1] = 'high', [2] = 'normal', [3] = 'low' }
local TERMINAL = { completed = true, failed = true, cancelled = true, timeout = true }
local LATENCY_SMOOTHING = 0.2
local REVOKED_HISTORY = 8
local CLAIM_WAITS_KEPT = 1024 -- model::CLAIM_WAITS_KEPT

-- ------------------------------------------------------------------------------------------------------------------
-- Events: appended to the capped stream in the same script as the change they describe.

-- Tasks this script put back to pending, claimable now: answered to the host, which routes them.
local REQUEUED = {}

local function json(tbl)
  if next(tbl) == nil then return '{}' end
  return cjson.encode(tbl)
end

-- An event is one field `e`, `n|type|time|server|task|agent|data` (decision 0030): every server of a fleet reads every
-- entry, and each value of a reply costs Redis and each reader alike. Only the data, last, may hold a `|`.
local function emit(kind, task, agent, data)
  local n = redis.call('INCR', K.event_count)
  if CFG.event_fields then
    redis.call('XADD', K.events, 'MAXLEN', '~', CFG.event_buffer, '*',
      'n', n2s(n), 'type', kind, 'time', NOW_S, 'server', CFG.server,
      'task', task or '', 'agent', agent or '', 'data', data)
  else
    redis.call('XADD', K.events, 'MAXLEN', '~', CFG.event_buffer, '*', 'e',
      n2s(n) .. '|' .. kind .. '|' .. NOW_S .. '|' .. CFG.server .. '|' .. (task or '') .. '|' .. (agent or '') .. '|'
        .. data)
  end
end

-- ------------------------------------------------------------------------------------------------------------------
-- An agent's record as this call knows it: the fields the steps read (`AGENT_FIELDS`), read with one command the first
-- time a step asks and kept for the rest of the call, so that the many steps of one transition that look at the
-- same agent (its session, the rule, its capacity, its counters, its breaker) do not read it again each. Every
-- write to one of these fields goes through `agent_set`/`agent_unset`, which keep the row true; a body that writes
-- the record itself calls `agent_changed`. A row of an unknown agent has `status` false. (The list is spelled out:
-- while Redis loads a function library, its top level sees no Lua libraries, not even `unpack`.)

local AGENT_FIELDS = { 'status', 'session', 'max', 'paused', 'h_status', 'b_state', 'b_opened', 'b_trial', 'caps',
  'provider', 'completed', 'latency', 'failed', 'assigned' }
local AGENT_ROWS = {}
-- How many times this call wrote each agent's record.
local AGENT_WRITES = {}

local function agent_row(id)
  local row = AGENT_ROWS[id]
  if not row then
    local values = redis.call('HMGET', akey(id), unpack(AGENT_FIELDS))
    row = {}
    for i, name in ipairs(AGENT_FIELDS) do row[name] = values[i] end
    AGENT_ROWS[id] = row
  end
  return row
end

-- The record changed behind the row's back: read it again next time.
local function agent_changed(id)
  AGENT_ROWS[id] = nil
  AGENT_WRITES[id] = (AGENT_WRITES[id] or 0) + 1
end

-- HSET of field/value pairs (strings) on the agent's record, kept in its row.
local function agent_set(id, ...)
  redis.call('HSET', akey(id), ...)
  AGENT_WRITES[id] = (AGENT_WRITES[id] or 0) + 1
  local row = AGENT_ROWS[id]
  if row then
    local given = { ... }
    for i = 1, #given, 2 do
      if row[given[i]] ~= nil then row[given[i]] = given[i + 1] end
    end
  end
end

-- HDEL of fields of the agent's record, kept in its row.
local function agent_unset(id, ...)
  redis.call('HDEL', akey(id), ...)
  AGENT_WRITES[id] = (AGENT_WRITES[id] or 0) + 1
  local row = AGENT_ROWS[id]
  if row then
    for _, name in ipairs({ ... }) do
      if row[name] ~= nil then row[name] = false end
    end
  end
end

-- ------------------------------------------------------------------------------------------------------------------
-- "May this agent take work?": the mirror of the model's rule (`model/eligibility.rs`, `Standing::refusal`), which
-- the store conformance suite pins it to. A breaker open past its cooldown counts as half-open with no trial out;
-- `refusal` (below) also makes that transition. Answers the reason, or nil.

-- The rule over the fields it reads: paused, status, h_status, b_state, b_opened, b_trial. `refusal_of` takes them
-- from the agent's row; the offer, which reads many agents once each, calls `refusal_from` with its own read.

local function refusal_from(paused, status, health, breaker, opened, trial)
  if not status then return 'offline' end
  if paused == '1' then return 'paused' end
  if health == 'unhealthy' then return 'unhealthy' end
  if breaker == 'open' and NOW >= tonumber(opened) + CFG.breaker_cooldown then breaker, trial = 'half_open', false end
  if breaker == 'open' then return 'breaker_open' end
  if breaker == 'half_open' and trial then return 'breaker_trial_in_flight' end
  if status == 'ready' or status == 'busy' then return nil end
  return status -- draining, failed, offline, starting: the reason is the status
end

local function refusal_of(id)
  local a = agent_row(id)
  return refusal_from(a.paused, a.status, a.h_status, a.b_state, a.b_opened, a.b_trial)
end

-- The rule's answer kept with the numbers, last (the gate): `R` when it let the agent take work and the agent is ready
-- with one slot (so it holds nothing), `A` when it let the agent take work otherwise, `-` when it refused or when its
-- answer may change with time alone (a breaker that is not closed: its cooldown runs out). So an offer reads one
-- byte of an agent it may offer instead of taking the rule's seven fields apart. The answer stays true until the
-- record changes, and every change writes the numbers again. Servers of older builds write eleven fields; the last
-- of those (last assigned) is never a letter, which is how the offer tells. The letters mean this build's rule: a
-- build whose rule differs must use other letters, or its offers would trust answers this one wrote.
local function gate_of(a)
  if (a.b_state or 'closed') ~= 'closed' then return '-' end
  if refusal_from(a.paused, a.status, a.h_status, a.b_state, a.b_opened, a.b_trial) ~= nil then return '-' end
  if a.status == 'ready' and a.max == '1' then return 'R' end
  return 'A'
end

-- What the offer compares a gate with: the bytes of `R`, `A` and `|` (spelled as numbers: while Redis loads a
-- function library, its top level sees no Lua libraries); and the seventh field (max), which `A` leaves to read.
local GATE_READY_ONE, GATE_ALLOWED, PIPE = 82, 65, 124
local MAX_FIELD = '^[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|([^|]*)|'

-- An agent's numbers for routing, as one value in `P agent-numbers`, so that an offer reads a page of agents with one
-- command instead of one read of each record: what the eligibility rule looks at and what a strategy reads, in the
-- order `offer` parses. Every call that wrote an agent's record writes it again as it ends (`finish`).
local function numbers_of(a)
  return table.concat({ a.status, a.paused or '0', a.h_status or '', a.b_state or 'closed', a.b_opened or '0',
    a.b_trial and '1' or '', a.max, a.completed or '0', a.failed or '0', a.latency or '0', a.assigned or '',
    gate_of(a) }, '|')
end

local function write_numbers()
  for id in pairs(AGENT_WRITES) do
    local a = agent_row(id)
    -- A record without its registration's fields (only ever a partial one) has no summary: offers read it.
    if a.status and a.max then
      redis.call('HSET', K.agent_numbers, id, numbers_of(a))
    else
      redis.call('HDEL', K.agent_numbers, id)
    end
  end
end

-- ------------------------------------------------------------------------------------------------------------------
-- Agent counters: an agent's standing (what of it the counters count) is taken before the script first changes
-- the agent and again at the end if the script wrote its record since, and only the counters whose part changed are
-- written, so the counters follow every change without each step keeping them by hand, and a step that changes
-- nothing they count writes none.

-- Agent → {its standing when marked, how many times the call had written it then}.
local MARKED = {}
local MARKED_ORDER = {}

-- What of agent `id` the counters count, from its row alone (the clock is the call's): {status, provider, health,
-- capabilities, breaker not closed, available}, or false for an unknown agent. An eligible agent is available when
-- it is ready, since `refresh_capacity` makes a ready agent busy at capacity before any step ends (and `mark` reads
-- before the step's first change, `finish` after its last).
local function standing_of(id)
  local a = agent_row(id)
  if not a.status then return false end
  local available = a.status == 'ready' and refusal_of(id) == nil
  return { a.status, a.provider, a.h_status, a.caps, a.b_state ~= 'closed', available }
end

-- A capability set (comma-joined, sorted; '' is the empty set) as a Lua set.
local function cap_set(text)
  local set = {}
  if text and text ~= '' then
    for cap in string.gmatch(text, '[^,]+') do set[cap] = true end
  end
  return set
end

-- Adds `by` to every counter a standing counts in.
local function count_standing(s, by)
  local S = K.agent_stats
  redis.call('HINCRBY', S, 'total', by)
  redis.call('HINCRBY', S, 'status:' .. s[1], by)
  redis.call('HINCRBY', S, 'provider:' .. s[2], by)
  redis.call('HINCRBY', S, 'health:' .. s[3], by)
  for cap in pairs(cap_set(s[4])) do redis.call('HINCRBY', S, 'cap:' .. cap, by) end
  if s[5] then redis.call('HINCRBY', S, 'open_breakers', by) end
  if s[6] then redis.call('HINCRBY', S, 'available', by) end
end

-- Moves one count from `before`'s counter to `after`'s (prefixed names; equal values move nothing).
local function recount(prefix, before, after)
  if before == after then return end
  redis.call('HINCRBY', K.agent_stats, prefix .. before, '-1')
  redis.call('HINCRBY', K.agent_stats, prefix .. after, '1')
end

local function recount_flag(name, before, after)
  if before == after then return end
  redis.call('HINCRBY', K.agent_stats, name, after and '1' or '-1')
end

local function mark(id)
  if MARKED[id] then return end
  MARKED[id] = { standing_of(id), AGENT_WRITES[id] or 0 }
  table.insert(MARKED_ORDER, id)
end

local function finish()
  for _, id in ipairs(MARKED_ORDER) do
    -- Unwritten since `mark`: the same row, the same counters.
    if (AGENT_WRITES[id] or 0) ~= MARKED[id][2] then
      local before, after = MARKED[id][1], standing_of(id)
      if before and after then
        recount('status:', before[1], after[1])
        recount('provider:', before[2], after[2])
        recount('health:', before[3], after[3])
        if before[4] ~= after[4] then
          local had, has = cap_set(before[4]), cap_set(after[4])
          for cap in pairs(had) do
            if not has[cap] then redis.call('HINCRBY', K.agent_stats, 'cap:' .. cap, '-1') end
          end
          for cap in pairs(has) do
            if not had[cap] then redis.call('HINCRBY', K.agent_stats, 'cap:' .. cap, '1') end
          end
        end
        recount_flag('open_breakers', before[5], after[5])
        recount_flag('available', before[6], after[6])
      elseif before then
        count_standing(before, '-1')
      elseif after then
        count_standing(after, '1')
      end
    end
  end
  MARKED = {}
  MARKED_ORDER = {}
  write_numbers()
  AGENT_WRITES = {}
end

-- Replies: {'ok'|'err', now, pinned, ...}.
local function ok(...)
  finish()
  return { 'ok', NOW_S, PINNED, ... }
end

-- An error as a value: {kind, code, message}; kinds are task_not_found, agent_not_found, conflict,
-- too_many_signatures.
local function err(kind, code, message) return { kind, code, message } end

local function fail(e)
  finish()
  return { 'err', NOW_S, PINNED, e[1], e[2], e[3] }
end

-- ------------------------------------------------------------------------------------------------------------------
-- Capability sets are comma-joined sorted lists ('' is the empty set): a task's is its signature.

-- An agent's address, held by its claims alone (model/capability.rs `address_of`).
local function address_of(agent) return 'agent:' .. string.lower(agent) end

local function subset(text, set)
  if text == '' then return true end
  for cap in string.gmatch(text, '[^,]+') do
    if not set[cap] then return false end
  end
  return true
end

-- ------------------------------------------------------------------------------------------------------------------
-- Views returned to the host.

local function task_view(id) return redis.call('HGETALL', tkey(id)) end

local function agent_view(id)
  local leases = redis.call('HKEYS', lkey(id))
  table.sort(leases)
  return { redis.call('HGETALL', akey(id)), leases, redis.call('HGET', K.beats, id) or '0' }
end

local function task_exists(id) return redis.call('EXISTS', tkey(id)) == 1 end
local function agent_exists(id) return redis.call('EXISTS', akey(id)) == 1 end

-- HMGET of any number of fields, in slices: Lua's `unpack` stops near 8,000 values.
local function hmget_many(key, names)
  if #names == 0 then return {} end
  if #names <= 1000 then return redis.call('HMGET', key, unpack(names)) end
  local values = {}
  for first = 1, #names, 1000 do
    local got = redis.call('HMGET', key, unpack(names, first, math.min(first + 999, #names)))
    for i = 1, #got do values[first + i - 1] = got[i] end
  end
  return values
end

-- One read of several fields of a hash, by name (a missing field is false). A step that reads a record once hands
-- the row to the helpers below, which otherwise read what they need themselves.
local function fields(key, names)
  local values = redis.call('HMGET', key, unpack(names))
  local row = {}
  for i, name in ipairs(names) do row[name] = values[i] end
  return row
end

-- What granting a task reads of it (`grant`, `dequeue` and `set_status` with the same row): a step that looks at a
-- task before it grants it reads these at once.
local GRANT_FIELDS = { 'status', 'avail', 'caps', 'seq', 'attempt', 'timeout', 'prio', 'finished' }

local function no_task(id) return err('task_not_found', '', id) end
local function no_agent(id) return err('agent_not_found', '', id) end

-- ------------------------------------------------------------------------------------------------------------------
-- Tasks

-- `t`, if the caller read the task already: its status, prio and finished. `writes`, if given: field/value pairs of
-- the caller's to write in the same `HSET` as the status (one command per transition, not one per step).
local function set_status(id, status, t, writes)
  local k = tkey(id)
  t = t or fields(k, { 'status', 'prio', 'finished' })
  local old = t.status
  if old == status then
    if writes then redis.call('HSET', k, unpack(writes)) end
    return
  end
  writes = writes or {}
  table.insert(writes, 'status')
  table.insert(writes, status)
  if TERMINAL[status] then
    table.insert(writes, 'completed')
    table.insert(writes, NOW_S)
    table.insert(writes, 'finished')
    table.insert(writes, NOW_S)
  end
  redis.call('HSET', k, unpack(writes))
  redis.call('HINCRBY', K.stats, 'status:' .. old, '-1')
  redis.call('HINCRBY', K.stats, 'status:' .. status, '1')
  local priority = PRIORITY[tonumber(t.prio)]
  if old == 'pending' then
    redis.call('HINCRBY', K.stats, 'prio:' .. priority, '-1')
    if status == 'claimed' then
      local since = redis.call('ZSCORE', K.pending_since, id)
      if since then
        if redis.call('LPUSH', K.claim_waits, n2s(math.max(0, NOW - tonumber(since)))) > CLAIM_WAITS_KEPT then
          redis.call('LTRIM', K.claim_waits, '0', n2s(CLAIM_WAITS_KEPT - 1))
        end
      end
    end
    redis.call('ZREM', K.pending_since, id)
  end
  if status == 'pending' then
    redis.call('HINCRBY', K.stats, 'prio:' .. priority, '1')
    redis.call('ZADD', K.pending_since, NOW_S, id)
  end
  if TERMINAL[status] then
    redis.call('ZADD', K.finished, NOW_S, id)
  elseif TERMINAL[old] and t.finished then
    redis.call('HDEL', k, 'finished')
    redis.call('ZREM', K.finished, id)
  end
end

-- The ready-set member: the sequence zero-padded, so equal scores order by sequence (FIFO), as memory's
-- (score, seq, id) key does.
local function member(seq, id) return string.rep('0', 16 - #seq) .. seq .. '|' .. id end
local function member_id(m) return string.sub(m, 18) end

-- `t`, if the caller has them: the task's avail, score, seq and caps.
local function enqueue(id, t)
  t = t or fields(tkey(id), { 'avail', 'score', 'seq', 'caps' })
  if t.avail and tonumber(t.avail) > NOW then
    redis.call('ZADD', K.delayed, t.avail, id)
  else
    redis.call('ZADD', rkey(t.caps), t.score, member(t.seq, id))
    redis.call('SADD', K.sigs, t.caps)
  end
end

-- `t`, if the caller read the task already: its avail, seq and caps.
local function dequeue(id, t)
  t = t or fields(tkey(id), { 'avail', 'seq', 'caps' })
  if t.avail then redis.call('ZREM', K.delayed, id) end
  local ready = rkey(t.caps)
  if redis.call('ZREM', ready, member(t.seq, id)) == 1 and redis.call('EXISTS', ready) == 0 then
    redis.call('SREM', K.sigs, t.caps)
  end
end

-- Moves delayed tasks whose backoff is over into the claim index (at most `limit`; the rest follow next time) and
-- answers them.
local function promote_due(limit)
  local promoted = {}
  local due = redis.call('ZRANGEBYSCORE', K.delayed, '-inf', NOW_S, 'LIMIT', '0', n2s(limit))
  for _, id in ipairs(due) do
    redis.call('ZREM', K.delayed, id)
    if task_exists(id) then
      redis.call('HDEL', tkey(id), 'avail')
      enqueue(id)
      table.insert(promoted, id)
    end
  end
  return promoted
end

-- The best claimable task among the signatures `caps` covers: the lowest (score, member) of their heads, counting
-- the heads examined (`last_claim_examined`: flat in the backlog). `skip` (for peek) holds ids already taken.
local function best_for(caps, skip)
  local best_score, best_member = nil, nil
  local examined = 0
  for _, sig in ipairs(redis.call('SMEMBERS', K.sigs)) do
    if subset(sig, caps) then
      local offset = 0
      while true do
        local place = n2s(offset)
        local head = redis.call('ZRANGE', rkey(sig), place, place, 'WITHSCORES')
        if #head == 0 then break end
        local m, score = head[1], tonumber(head[2])
        if not (skip and skip[member_id(m)]) then
          examined = examined + 1
          if best_score == nil or score < best_score or (score == best_score and m < best_member) then
            best_score, best_member = score, m
          end
          break
        end
        offset = offset + 1
      end
    end
  end
  redis.call('HSET', K.stats, 'examined', n2s(examined))
  if best_member then return member_id(best_member) end
  return nil
end

local function score_of(level, seq)
  if CFG.aging then return NOW + level * CFG.aging end
  return level * 1099511627776 + seq -- 2^40
end

-- ------------------------------------------------------------------------------------------------------------------
-- Agents

-- `writes`, if given: field/value pairs of the caller's for the agent's record, written in the same `HSET` as the
-- status (or alone when the status does not change).
local function set_agent_status(id, status, writes)
  mark(id)
  local old = agent_row(id).status
  if old == status then
    if writes then agent_set(id, unpack(writes)) end
    return
  end
  writes = writes or {}
  table.insert(writes, 'status')
  table.insert(writes, status)
  if old == 'failed' then
    -- Whatever made it leave `failed`, a later healthy verdict must not undo a later fatal report.
    table.insert(writes, 'h_byprobe')
    table.insert(writes, '0')
  end
  agent_set(id, unpack(writes))
  -- Offline agents are indexed by their last heartbeat, for retention without a scan.
  if status == 'offline' then
    redis.call('ZADD', K.offline, redis.call('HGET', K.beats, id) or NOW_S, id)
  elseif old == 'offline' then
    redis.call('ZREM', K.offline, id)
  end
  -- Both are status names (no escaping needed): built as text rather than by cjson, on every task's way.
  local change = old and ('{"from":"' .. old .. '","to":"' .. status .. '"}') or json({ from = old, to = status })
  emit('agent_status_changed', nil, id, change)
end

-- Capacity decides between ready and busy. A caller that has just read the agent's status and max passes them;
-- `writes` (optional, see `set_agent_status`) go to the record in the same command either way.
local function refresh_capacity(id, status, max, writes)
  mark(id)
  if not status then
    local a = agent_row(id)
    status, max = a.status, a.max
  end
  local at_capacity = redis.call('HLEN', lkey(id)) >= tonumber(max)
  if at_capacity and status == 'ready' then
    set_agent_status(id, 'busy', writes)
  elseif not at_capacity and status == 'busy' then
    set_agent_status(id, 'ready', writes)
  elseif writes then
    agent_set(id, unpack(writes))
  end
end

-- Keeps an agent alive: the small heartbeat writes (beats, expiry) apart from the record, and offline or starting
-- becomes ready.
local function touch(id)
  mark(id)
  redis.call('HSET', K.beats, id, NOW_S)
  redis.call('ZADD', K.expiry, n2s(NOW + CFG.heartbeat_timeout), id)
  local a = agent_row(id)
  if a.status == 'offline' or a.status == 'starting' then
    set_agent_status(id, 'ready')
    -- It may hold leases still (a lost heartbeat does not end them): busy if they fill it.
    refresh_capacity(id, 'ready', a.max)
  elseif a.status == 'busy' then
    -- An agent may have reported itself busy below capacity (heartbeat): capacity decides again. A ready agent is
    -- below capacity already, as every step ends.
    refresh_capacity(id, 'busy', a.max)
  end
end

local function check_session(id, session)
  local a = agent_row(id)
  if not a.status then return no_agent(id) end
  if session and session ~= '' and session ~= a.session then
    return err('conflict', 'session_replaced',
      'session ' .. session .. ' of agent ' .. id .. ' was replaced by a newer registration')
  end
  return nil
end

-- The eligibility rule now (`refusal_of`); an open breaker past its cooldown turns half-open here, with its event.
-- Answers the reason (nil: eligible) and, read with it, the agent's registered capabilities.
local function refusal(id)
  local a = agent_row(id)
  if a.b_state == 'open' and NOW >= tonumber(a.b_opened) + CFG.breaker_cooldown then
    mark(id)
    agent_set(id, 'b_state', 'half_open')
    agent_unset(id, 'b_trial')
    emit('breaker_changed', nil, id, json({ from = 'open', to = 'half_open' }))
  end
  return refusal_of(id), a.caps
end

-- Whether the agent may be given work now.
local function eligible(id) return refusal(id) == nil end

-- A failure against the breaker: it opens after `breaker_threshold` failures over at least two distinct tasks within
-- the window, and a failed half-open trial opens it again.
local function breaker_failure(id, task)
  if not agent_exists(id) then return end
  local fk = fkey(id)
  redis.call('RPUSH', fk, NOW_S .. '|' .. (task or ''))
  while true do
    local first = redis.call('LINDEX', fk, 0)
    if not first then break end
    local at = tonumber(string.match(first, '^(%d+)|'))
    if at + CFG.breaker_window >= NOW then break end
    redis.call('LPOP', fk)
  end
  local failures = redis.call('LRANGE', fk, 0, -1)
  local distinct, count = {}, 0
  for _, f in ipairs(failures) do
    local t = string.match(f, '|(.*)$')
    if t ~= '' and not distinct[t] then
      distinct[t] = true
      count = count + 1
    end
  end
  local from = agent_row(id).b_state
  local open = false
  if from == 'closed' then
    open = #failures >= math.max(CFG.breaker_threshold, 1) and count >= 2
  elseif from == 'half_open' then
    open = true
  end
  if open then
    mark(id)
    agent_set(id, 'b_state', 'open', 'b_opened', NOW_S)
    agent_unset(id, 'b_trial')
    emit('breaker_changed', nil, id, json({ from = from, to = 'open' }))
  end
end

-- A completed half-open trial closes the breaker.
local function breaker_success(id, task)
  -- An unknown agent reads as no breaker at all.
  local a = agent_row(id)
  if a.b_state == 'half_open' and a.b_trial == task then
    mark(id)
    agent_set(id, 'b_state', 'closed', 'b_opened', '0')
    agent_unset(id, 'b_trial')
    redis.call('DEL', fkey(id))
    emit('breaker_changed', nil, id, json({ from = 'half_open', to = 'closed' }))
  end
end

-- Expired waiter tokens a registration drops at most.
local WAITER_SWEEP = '16'

-- A waiter token is dead once its claim's block is over (`until`, store ms). Tokens written before expiries
-- existed have none and stay live, as they always did.
local function waiter_expired(deadline)
  return deadline ~= false and deadline ~= nil and tonumber(deadline) <= NOW
end

-- Drops a waiting claim from every index (a no-op for an unknown token). `w`, if the caller read the token's record
-- already: its agent and caps, in that order.
local function remove_waiter(token, w)
  w = w or redis.call('HMGET', wkey(token), 'agent', 'caps')
  redis.call('ZREM', K.waiters, token)
  redis.call('DEL', wkey(token))
  redis.call('HDEL', K.waiter_agents, token)
  if w[1] then redis.call('SREM', wskey(w[1]), token) end
  if w[2] then redis.call('ZREM', gkey(w[2]), token) end
end

local function remove_waiters_of(id)
  for _, token in ipairs(redis.call('SMEMBERS', wskey(id))) do remove_waiter(token) end
  redis.call('DEL', wskey(id))
end

-- Registers a waiting claim: its token, ordered by the store sequence (in its capability set's index) and dead
-- `lifetime` ms from now (the claim's block; `P waiters` is scored by that end). A server killed while claims block
-- leaves their tokens behind; a registration drops a few of the expired ones, so they neither pile up nor get
-- offered: one range read that finds nothing while none has expired. (Sweeping at one registration in eight saved
-- little, and a sample drawn from the store sequence, which submits share, could stop sweeping altogether.)
local function add_waiter(token, agent, caps, lifetime)
  for _, old in ipairs(redis.call('ZRANGEBYSCORE', K.waiters, '-inf', NOW_S, 'LIMIT', '0', WAITER_SWEEP)) do
    -- The record decides: a token registered by an older version is scored by its sequence, not its end.
    if waiter_expired(redis.call('HGET', wkey(old), 'until')) then remove_waiter(old) end
  end
  -- A live token is in `P waiters` until it is removed: one look instead of a removal for every fresh token.
  if redis.call('ZSCORE', K.waiters, token) then remove_waiter(token) end
  local seq = redis.call('INCR', K.seq)
  local deadline, place = n2s(NOW + lifetime), n2s(seq)
  redis.call('ZADD', K.waiters, deadline, token)
  redis.call('ZADD', gkey(caps), place, token)
  redis.call('SADD', K.waiting_sets, caps)
  redis.call('HSET', wkey(token), 'agent', agent, 'caps', caps, 'until', deadline, 'seq', place)
  -- The same agent and end again in one hash shared by all claims, so an offer reads a page of claims in one call;
  -- the record above stays for the other steps, and for servers of older builds on the same Redis.
  redis.call('HSET', K.waiter_agents, token, deadline .. ' ' .. agent)
  redis.call('SADD', wskey(agent), token)
end

-- Up to `limit` waiting claims whose capabilities cover `sig`, in waiting order, after the place `after` (a decimal
-- string): {seq as text, token, seq as a number (only when pages of several sets were merged)}, read only from the
-- capability sets that cover the signature. The places stay the text Redis gave: converting numbers is a large
-- part of a script's own work.
local function covering(sig, after, limit)
  local found = {}
  local sets = 0
  for _, set in ipairs(redis.call('SMEMBERS', K.waiting_sets)) do
    if subset(sig, cap_set(set)) then
      local page = redis.call('ZRANGEBYSCORE', gkey(set), '(' .. after, '+inf', 'WITHSCORES', 'LIMIT', '0',
        n2s(limit))
      if #page == 0 and redis.call('EXISTS', gkey(set)) == 0 then redis.call('SREM', K.waiting_sets, set) end
      if #page > 0 then sets = sets + 1 end
      for i = 1, #page, 2 do found[#found + 1] = { page[i + 1], page[i] } end
    end
  end
  -- One set's page is in waiting order already; pages of several are merged.
  if sets > 1 then
    for _, entry in ipairs(found) do entry[3] = tonumber(entry[1]) end
    table.sort(found, function(x, y) return x[3] < y[3] end)
    while #found > limit do table.remove(found) end
  end
  return found
end

-- The offer for work of `sig`: up to `limit` live waiting claims of agents the rule allows, longest-waiting first,
-- agents at capacity after the others. Each: {token, agent, seq, in flight, last heartbeat, the agent's numbers as
-- `P agent-numbers` holds them}: the gate at its end answers for the rule (else the rule reads the first
-- seven numbers here), and the host parses the strategy's from the same text (they pass through Lua untouched).
-- Per page of claims one read finds their agents (`P waiter-agents`) and one more their numbers (`P agent-numbers`:
-- the rule's fields and the strategy's; an agent no call of this build has written yet is read from its record);
-- per agent below capacity one read counts its tasks in flight; one read at the end gives every offered agent's
-- last heartbeat.
local function offer(sig, limit, after)
  local below, full = {}, {}
  local cursor = after
  local scanned = 0
  -- Refused agents are skipped and agents below capacity looked for past those at capacity, within a bounded scan
  -- (as memory's OFFER_SCAN_FACTOR).
  while #below < limit and scanned < 4 * limit do
    local page = covering(sig, cursor, limit)
    if #page == 0 then break end
    cursor = page[#page][1]
    scanned = scanned + #page
    local tokens = {}
    for i, entry in ipairs(page) do tokens[i] = entry[2] end
    local held = hmget_many(K.waiter_agents, tokens)
    local live = {}
    for i, entry in ipairs(page) do
      local token = entry[2]
      local deadline, agent
      if held[i] then
        deadline, agent = string.match(held[i], '^(%d+) (.*)$')
      else
        -- Registered by a server of an older build: only its own record knows.
        local w = redis.call('HMGET', wkey(token), 'until', 'agent')
        deadline, agent = w[1], w[2]
      end
      if agent and not waiter_expired(deadline) then live[#live + 1] = { token, agent, entry[1] } end
    end
    local agents = {}
    for i, claim in ipairs(live) do agents[i] = claim[2] end
    local numbers = hmget_many(K.agent_numbers, agents)
    for i, claim in ipairs(live) do
      local agent = claim[2]
      local text = numbers[i]
      if not text then
        -- Not written since this build shared the Redis: the record itself, in the same form.
        local a = fields(akey(agent), AGENT_FIELDS)
        text = a.status and a.max and numbers_of(a)
      end
      -- An `R` or `A` gate (`gate_of`) answers for the rule; with `-` (refused, or a breaker's cooldown may run out)
      -- or none (an older build's text), the rule reads its seven fields.
      local gate, allowed, holds_nothing, max = text and string.byte(text, -2) == PIPE and string.byte(text, -1)
      if gate == GATE_READY_ONE then
        allowed, holds_nothing = true, true
      elseif gate == GATE_ALLOWED then
        allowed, max = true, string.match(text, MAX_FIELD)
      elseif text then
        local status, paused, health, breaker, opened, trial
        status, paused, health, breaker, opened, trial, max = string.match(text,
          '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|')
        allowed = status and refusal_from(paused, status, health, breaker, opened, trial == '1') == nil
        holds_nothing = max == '1' and status == 'ready'
      end
      if allowed then
        -- A ready one-slot agent holds nothing (`refresh_capacity` makes a ready agent busy at capacity before any
        -- step ends); otherwise count (an agent may report itself busy below capacity).
        -- The counts go back as integers (Redis answers a Lua number as one) and the place as the text it was read
        -- as: no number printed. Registration keeps max at 1 or more, so an agent holding nothing is below it.
        local in_flight = 0
        if not holds_nothing then in_flight = redis.call('HLEN', lkey(agent)) end
        -- The claim's {token, agent, place} becomes its answer: no table per candidate besides.
        claim[4], claim[5], claim[6] = in_flight, '0', text
        if in_flight > 0 and in_flight >= tonumber(max) then
          full[#full + 1] = claim
        else
          below[#below + 1] = claim
        end
      end
    end
  end
  for _, claim in ipairs(full) do below[#below + 1] = claim end
  while #below > limit do table.remove(below) end
  if #below > 0 then
    local agents = {}
    for i, claim in ipairs(below) do agents[i] = claim[2] end
    local beats = hmget_many(K.beats, agents)
    for i, claim in ipairs(below) do claim[5] = beats[i] or '0' end
  end
  return below
end

-- ------------------------------------------------------------------------------------------------------------------
-- Leases

-- Grants a pending task (already out of the index) to an agent under the host-drawn `lease`.
-- A routed grant names the waiter token it consumed in its event, so the server holding that blocked claim wakes it.
-- `t`, if the caller read the task already: its `GRANT_FIELDS`.
local function grant(id, agent, via, lease, waiter, t)
  local k = tkey(id)
  t = t or fields(k, GRANT_FIELDS)
  local attempt = (tonumber(t.attempt) or 0) + 1
  local deadline = n2s(NOW + tonumber(t.timeout) * 1000)
  -- A first attempt has nothing of an earlier one to clear: only a lease's holder starts, reports progress or fails.
  if attempt > 1 then redis.call('HDEL', k, 'started', 'progress', 'rq_lease', 'rq_error') end
  redis.call('ZADD', K.leases, deadline, id)
  set_status(id, 'claimed', t, { 'attempt', n2s(attempt), 'lease', lease, 'agent', agent, 'claimed', NOW_S,
    'unfenced', '0', 'deadline', deadline })
  mark(agent)
  redis.call('HSET', lkey(agent), id, NOW_S)
  local b = agent_row(agent)
  local writes = { 'assigned', NOW_S }
  if b.b_state == 'half_open' and not b.b_trial then
    table.insert(writes, 'b_trial')
    table.insert(writes, id)
  end
  refresh_capacity(agent, b.status, b.max, writes)
  -- Built as text, as `set_agent_status` does, unless the token would need escaping (the host's never do).
  local data
  if waiter and string.find(waiter, '[%c"\\]') then
    data = json({ attempt = attempt, via = via, waiter = waiter })
  else
    data = '{"attempt":' .. n2s(attempt) .. ',"via":"' .. via .. '"'
      .. (waiter and (',"waiter":"' .. waiter .. '"}') or '}')
  end
  emit('task_claimed', id, agent, data)
end

-- Ends the current lease: off the deadline index and the holder's leases; a revocation is remembered on the task
-- (to answer a late outcome with the right code) and queued for the holder's next heartbeat.
-- `t`, if the caller read the task already: its deadline, lease, agent and revoked. `holder_writes` (optional):
-- field/value pairs for the holder's record, written with its change of capacity in one command.
local function drop_lease(id, reason, t, holder_writes)
  local k = tkey(id)
  t = t or fields(k, { 'deadline', 'lease', 'agent', 'revoked' })
  redis.call('HDEL', k, 'deadline', 'lease')
  if t.deadline then redis.call('ZREM', K.leases, id) end
  if t.lease and reason then
    local history = {}
    if t.revoked and t.revoked ~= '' then
      for entry in string.gmatch(t.revoked, '[^,]+') do table.insert(history, entry) end
    end
    table.insert(history, t.lease .. ':' .. reason)
    while #history > REVOKED_HISTORY do table.remove(history, 1) end
    redis.call('HSET', k, 'revoked', table.concat(history, ','))
  end
  local holder = t.agent
  if holder and agent_row(holder).status then
    -- Marked before the lease goes: the holder's counted standing is the one before this change.
    mark(holder)
    if redis.call('HDEL', lkey(holder), id) == 1 then
      local b = agent_row(holder)
      if b.b_trial == id and b.b_state == 'half_open' then
        -- Decided by breaker_success/breaker_failure when the outcome is known; a trial that just ends frees the
        -- slot.
        agent_unset(holder, 'b_trial')
      end
      if reason then redis.call('RPUSH', revkey(holder), id .. ' ' .. reason) end
      refresh_capacity(holder, nil, nil, holder_writes)
      return
    end
  end
  if holder_writes then agent_set(holder, unpack(holder_writes)) end
end

local function revoked_reason(history, lease)
  if not history or history == '' then return nil end
  for entry in string.gmatch(history, '[^,]+') do
    local l, r = string.match(entry, '^([^:]*):(.*)$')
    if l == lease then return r end
  end
  return nil
end

local CONFLICT_CODE = { cancelled = 'task_cancelled', timeout = 'task_timeout', reassigned = 'lease_lost' }

-- Back to pending at the original place, optionally counting a retry and applying backoff.
local function requeue(id, count_retry, code, message)
  local k = tkey(id)
  local retries = tonumber(redis.call('HGET', k, 'retries'))
  if count_retry then
    retries = retries + 1
    redis.call('HSET', k, 'retries', retries)
  end
  if code then redis.call('HSET', k, 'le_code', code, 'le_msg', message) end
  redis.call('HDEL', k, 'claimed', 'started')
  if count_retry and CFG.backoff_base > 0 then
    local exponent = math.min(math.max(retries - 1, 0), 30)
    local backoff = math.min(CFG.backoff_base * 2 ^ exponent, CFG.backoff_max)
    local half = math.floor(backoff / 2)
    local jitter = math.floor(random() * (half + 1))
    redis.call('HSET', k, 'avail', n2s(NOW + half + jitter))
  end
  set_status(id, 'pending')
  enqueue(id)
  if not redis.call('HGET', k, 'avail') then table.insert(REQUEUED, id) end
end

-- Agent loss for one lease: requeue counting a retry, or fail with agent_lost when retries are exhausted.
local function lose(id, why)
  drop_lease(id, 'reassigned')
  local t = redis.call('HMGET', tkey(id), 'retries', 'max_retries')
  if tonumber(t[1]) < tonumber(t[2]) then
    requeue(id, true, 'agent_lost', why)
    emit('task_retried', id, nil, json({ reason = 'agent_lost', error = why }))
  else
    redis.call('HSET', tkey(id), 'error', why, 'le_code', 'agent_lost', 'le_msg', why)
    set_status(id, 'failed')
    emit('task_failed', id, nil, json({ reason = 'agent_lost', error = why }))
  end
end

local function lose_all(agent, why)
  local held = redis.call('HKEYS', lkey(agent))
  table.sort(held)
  for _, id in ipairs(held) do lose(id, why) end
end

-- Checks that the fence holds the task's current lease; explains a revoked one. Fence kinds: lease, agent, none.
-- `t`, if the caller read the task already: its status, lease, agent and revoked.
local function check_fence(id, kind, value, t)
  t = t or fields(tkey(id), { 'status', 'lease', 'agent', 'revoked' })
  local status = t.status
  if not status then return no_task(id) end
  if status == 'claimed' or status == 'running' then
    if kind == 'lease' then
      if t.lease == value then return nil end
      local code = CONFLICT_CODE[revoked_reason(t.revoked, value) or 'reassigned']
      return err('conflict', code, 'lease ' .. value .. ' no longer holds task ' .. id)
    elseif kind == 'agent' then
      if t.agent == value then return nil end
      return err('conflict', 'lease_lost', 'agent ' .. value .. ' does not hold task ' .. id)
    end
    return nil
  end
  if status == 'cancelled' then return err('conflict', 'task_cancelled', 'task ' .. id .. ' was cancelled') end
  if status == 'timeout' then return err('conflict', 'task_timeout', 'task ' .. id .. ' timed out') end
  if kind == 'lease' then
    local reason = revoked_reason(t.revoked, value)
    if reason then
      return err('conflict', CONFLICT_CODE[reason], 'lease ' .. value .. ' no longer holds task ' .. id)
    end
  end
  return err('conflict', 'lease_lost', 'task ' .. id .. ' is ' .. status .. ' and held by no lease of yours')
end

-- For an outcome on a finished task: the same outcome from the same holder answers the stored task ('stored');
-- anything else conflicts; nil when the task is not finished. `outcome` is 'completed' (value: the result as JSON)
-- or 'failed' (value: the error).
local function repeated_outcome(id, kind, fence, outcome, value, t)
  t = t or fields(tkey(id), { 'status', 'rq_lease', 'rq_error', 'outcome_lease', 'agent', 'result', 'error' })
  local status = t.status
  if not status then return nil, no_task(id) end
  if kind == 'lease' and t.rq_lease and fence == t.rq_lease then
    if outcome == 'failed' and value == t.rq_error then return 'stored', nil end
    return nil, err('conflict', 'outcome_conflict',
      'lease ' .. fence .. ' already failed task ' .. id .. ', which was requeued')
  end
  if status ~= 'completed' and status ~= 'failed' then return nil, nil end
  local same_holder
  if kind == 'lease' then
    same_holder = t.outcome_lease == fence
  elseif kind == 'agent' then
    same_holder = t.agent == fence
  else
    same_holder = true
  end
  local same_outcome
  if outcome == 'completed' then
    same_outcome = status == 'completed' and t.result == value
  else
    same_outcome = status == 'failed' and t.error == value
  end
  if same_holder and same_outcome then return 'stored', nil end
  if same_holder then
    return nil, err('conflict', 'outcome_conflict',
      'task ' .. id .. ' already ended ' .. status .. ' with a different outcome')
  end
  return nil, err('conflict', 'lease_lost', 'task ' .. id .. ' already ended ' .. status)
end

-- Claimed → running, if not yet.
local function mark_started(id)
  local t = redis.call('HMGET', tkey(id), 'status', 'agent')
  if t[1] == 'claimed' then
    redis.call('HSET', tkey(id), 'started', NOW_S)
    set_status(id, 'running')
    emit('task_started', id, t[2] or nil, '{}')
  end
end

-- What remembers the lease an outcome came under (none: unfenced): field/value pairs for the status write that ends
-- the task, with the outcome's own pairs (`...`). Without a lease it deletes an earlier outcome's lease itself (a
-- write cannot). `t`, if the caller read the task already: its lease.
local function outcome_writes(id, kind, t, ...)
  local lease = (t or fields(tkey(id), { 'lease' })).lease
  if not lease then
    redis.call('HDEL', tkey(id), 'outcome_lease')
    return { 'unfenced', kind == 'none' and '1' or '0', ... }
  end
  return { 'unfenced', kind == 'none' and '1' or '0', 'outcome_lease', lease, ... }
end

-- Completes a leased task (or answers a repeat of the same outcome). `reported` is the agent's own latency in ms
-- ('' when it sent none), which feeds its average in place of claim-to-completion. Returns an error value or nil.
local function complete(id, kind, fence, result, reported)
  local k = tkey(id)
  -- One read of the task answers the repeat check, the fence, the lease's end and the status change.
  local t = fields(k, { 'status', 'rq_lease', 'rq_error', 'outcome_lease', 'agent', 'result', 'error', 'lease',
    'revoked', 'deadline', 'claimed', 'prio', 'finished' })
  local stored, e = repeated_outcome(id, kind, fence, 'completed', result, t)
  if e then return e end
  if stored then return nil end
  e = check_fence(id, kind, fence, t)
  if e then return e end
  local writes = outcome_writes(id, kind, t, 'result', result)
  local latency = tonumber(reported or '') or (t.claimed and math.max(NOW - tonumber(t.claimed), 0)) or nil
  local agent = t.agent or nil
  if agent then breaker_success(agent, id) end
  -- The agent's counters, written with its status as the lease ends. None for an agent that is gone (unregistered
  -- while it ran the task).
  local counters = nil
  if agent then
    local a = agent_row(agent)
    if a.completed then
      local done = tonumber(a.completed) + 1
      -- Rolling: an exponentially weighted average (the first completion sets it outright).
      local avg = latency
      if latency and done ~= 1 then
        avg = tonumber(a.latency) * (1 - LATENCY_SMOOTHING) + latency * LATENCY_SMOOTHING
      end
      counters = { 'completed', n2s(done) }
      if avg then
        table.insert(counters, 'latency')
        table.insert(counters, string.format('%.17g', avg))
      end
    end
  end
  drop_lease(id, nil, t, counters)
  set_status(id, 'completed', t, writes)
  emit('task_completed', id, agent, kind == 'none' and '{"unfenced":true}' or '{"unfenced":false}')
  return nil
end

-- Grants the best pending tasks the agent can take; `leases` are host-drawn lease ids, one per task at most. With a
-- `wait` ({token, lifetime}) it registers that waiting claim when nothing was granted. A claim keeps its agent alive
-- first. Answers {granted ids, refusal or nil, waiting, promoted ids} or nil and an error.
local function claim(agent, caps_text, has_caps, max_tasks, session, leases, wait)
  local e = check_session(agent, session)
  if e then return nil, e end
  touch(agent)
  local refused, registered_text = refusal(agent)
  if refused then return { granted = {}, refusal = refused, waiting = false, promoted = {} }, nil end
  local promoted = promote_due(1000)
  -- The store enforces narrowing itself: a claim may not ask for capabilities the agent does not hold.
  local caps_list = {}
  if has_caps then
    local registered = cap_set(registered_text)
    for cap in string.gmatch(caps_text, '[^,]+') do
      if registered[cap] then table.insert(caps_list, cap) end
    end
  else
    for cap in string.gmatch(registered_text, '[^,]+') do table.insert(caps_list, cap) end
  end
  table.sort(caps_list)
  local caps = {}
  for _, cap in ipairs(caps_list) do caps[cap] = true end
  caps[address_of(agent)] = true
  local granted = {}
  while #granted < max_tasks and #granted < #leases and (#granted == 0 or eligible(agent)) do
    local id = best_for(caps, nil)
    if not id then break end
    local t = fields(tkey(id), GRANT_FIELDS)
    dequeue(id, t)
    grant(id, agent, 'claim', leases[#granted + 1], nil, t)
    table.insert(granted, id)
  end
  local still = {}
  for _, id in ipairs(promoted) do
    if redis.call('HGET', tkey(id), 'status') == 'pending' then table.insert(still, id) end
  end
  local waiting = false
  if #granted == 0 and wait then
    add_waiter(wait.token, agent, table.concat(caps_list, ','), wait.lifetime)
    waiting = true
  end
  return { granted = granted, refusal = nil, waiting = waiting, promoted = still }, nil
end

-- A claim's answer as the host reads it: {task views, refusal or '', '1' if waiting, promoted ids}.
local function claim_reply(answer)
  local views = {}
  for _, id in ipairs(answer.granted) do table.insert(views, task_view(id)) end
  return { views, answer.refusal or '', answer.waiting and '1' or '0', answer.promoted }
end

-- Reads a claim's arguments from position `at`: agent, has_caps, caps, max_tasks, session|'', wait token|'',
-- wait lifetime ms, lease count, lease ids... Answers the values and the next position.
local function claim_args(at)
  local agent, has_caps, caps, max_tasks, session = arg(at), arg(at + 1) == '1', arg(at + 2), tonumber(arg(at + 3)),
      arg(at + 4)
  local wait = nil
  if arg(at + 5) ~= '' then wait = { token = arg(at + 5), lifetime = tonumber(arg(at + 6)) } end
  local count = tonumber(arg(at + 7))
  local leases = {}
  for i = 1, count do table.insert(leases, arg(at + 7 + i)) end
  return agent, caps, has_caps, max_tasks, session, leases, wait
end

-- ------------------------------------------------------------------------------------------------------------------
-- Starts a call: its keys and arguments, the configuration, the clock, and fresh per-call state.

local function begin(keys, argv)
  KEYS, ARGV, P = keys, argv, keys[1]
  CFG = config_of(argv)
  K = KEY_TABLES[P]
  if not K then
    K = key_table(P)
    KEY_TABLES[P] = K
  end
  read_clock()
  SEED, REQUEUED, MARKED, MARKED_ORDER, AGENT_ROWS, AGENT_WRITES = 1, {}, {}, {}, {}, {}
end
