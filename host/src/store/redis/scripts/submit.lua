-- submit(offer limit, count, then per task 15 fields: id, type, payload, caps, level, timeout, max_retries, metadata,
-- strategy|'', has_strategy, key|'', has_key, submitted_by, fingerprint, event data): all or nothing. Every check
-- (idempotency, signatures) runs before the first insert. In the same step, the offer of waiting claims for each
-- signature the batch created work for. Answers {per task: id, '1' if replayed, offer number (0: none)}, {offers}.
local FIELDS = 15
local offer_limit = tonumber(arg(1))
local count = tonumber(arg(2))
local tasks = {}
for i = 1, count do
  local b = 2 + (i - 1) * FIELDS
  tasks[i] = {
    id = arg(b + 1), type = arg(b + 2), payload = arg(b + 3), caps = arg(b + 4), level = tonumber(arg(b + 5)),
    level_text = arg(b + 5),
    timeout = arg(b + 6), max_retries = arg(b + 7), metadata = arg(b + 8), strategy = arg(b + 9),
    has_strategy = arg(b + 10) == '1', key = arg(b + 11), has_key = arg(b + 12) == '1', by = arg(b + 13),
    fingerprint = arg(b + 14), data = arg(b + 15),
  }
end

local function slot(t) return n2s(string.len(t.by)) .. ':' .. t.by .. t.key end

-- The idempotency check: the replayed id, an error for a reused key, or nil to go ahead.
local function replay_of(t)
  if not t.has_key then return nil, nil end
  local s = slot(t)
  local found = redis.call('HGET', K.idem, s)
  if not found then return nil, nil end
  local task, fingerprint, expires = string.match(found, '^(%S+) (%S+) (%d+)$')
  if tonumber(expires) <= NOW then
    redis.call('HDEL', K.idem, s)
    redis.call('ZREM', K.idem_exp, s)
    return nil, nil
  end
  if fingerprint == t.fingerprint then return task, nil end
  return nil, err('conflict', 'idempotency_key_reused',
    'idempotency key ' .. cjson.encode(t.key) .. ' was used for a different task')
end

local replays = {}
local first_use = {}
for i, t in ipairs(tasks) do
  local s = t.has_key and slot(t) or nil
  if s and first_use[s] then
    -- A key repeated within the batch is a replay of its first use (same body) or a conflict.
    local first = first_use[s]
    if tasks[first].fingerprint ~= t.fingerprint then
      return fail(err('conflict', 'idempotency_key_reused',
        'idempotency key ' .. cjson.encode(t.key) .. ' is used for two different tasks of the batch'))
    end
    replays[i] = replays[first] or tasks[first].id
  else
    if s then first_use[s] = i end
    local replay, e = replay_of(t)
    if e then return fail(e) end
    replays[i] = replay or false
  end
end

-- Signatures: a batch may create new ones only within MAX_SIGNATURES.
local new, seen = 0, {}
for _, t in ipairs(tasks) do
  if not seen[t.caps] then
    seen[t.caps] = true
    if redis.call('SISMEMBER', K.sigs, t.caps) == 0 then new = new + 1 end
  end
end
if new > 0 and redis.call('SCARD', K.sigs) + new > CFG.max_signatures then
  return fail(err('too_many_signatures', '', n2s(CFG.max_signatures)))
end

-- Backpressure: the batch's new tasks may not take the pending count past MAX_PENDING_TASKS.
if CFG.max_pending > 0 then
  local adding = 0
  for i = 1, count do if not replays[i] then adding = adding + 1 end end
  local pending = tonumber(redis.call('HGET', K.stats, 'status:pending')) or 0
  if adding > 0 and pending + adding > CFG.max_pending then
    return fail(err('too_many_pending', '', n2s(CFG.max_pending)))
  end
end

local answers, offers, offer_of = {}, {}, {}
for i, t in ipairs(tasks) do
  if replays[i] then
    table.insert(answers, replays[i])
    table.insert(answers, '1')
    table.insert(answers, '0')
  else
    local seq = redis.call('INCR', K.seq)
    local k = tkey(t.id)
    local queued = { avail = false, score = n2s(score_of(t.level, seq)), seq = n2s(seq), caps = t.caps }
    -- One write of the record: the fields every step reads first (a small hash is scanned from the front).
    local record = { 'status', 'pending', 'caps', t.caps, 'seq', queued.seq, 'attempt', '0', 'timeout', t.timeout,
      'prio', t.level_text, 'score', queued.score, 'id', t.id, 'type', t.type, 'payload', t.payload, 'created', NOW_S,
      'max_retries', t.max_retries, 'retries', '0', 'manual', '0', 'metadata', t.metadata, 'by', t.by, 'unfenced', '0' }
    if t.has_strategy then
      table.insert(record, 'strategy')
      table.insert(record, t.strategy)
    end
    if t.has_key then
      table.insert(record, 'idem')
      table.insert(record, t.key)
    end
    redis.call('HSET', k, unpack(record))
    redis.call('ZADD', K.tasks, queued.seq, t.id)
    redis.call('ZADD', K.pending_since, NOW_S, t.id)
    redis.call('HINCRBY', K.stats, 'status:pending', '1')
    redis.call('HINCRBY', K.stats, 'prio:' .. PRIORITY[t.level], '1')
    redis.call('HINCRBY', K.stats, 'type:' .. t.type, '1')
    if t.has_key then
      local expires = NOW + CFG.idempotency_ttl
      redis.call('HSET', K.idem, slot(t), t.id .. ' ' .. t.fingerprint .. ' ' .. n2s(expires))
      redis.call('ZADD', K.idem_exp, n2s(expires), slot(t))
    end
    enqueue(t.id, queued)
    emit('task_submitted', t.id, nil, t.data)
    if offer_of[t.caps] == nil then
      local claims = offer(t.caps, offer_limit, '0')
      if #claims > 0 then
        table.insert(offers, claims)
        offer_of[t.caps] = #offers
      else
        offer_of[t.caps] = 0
      end
    end
    table.insert(answers, t.id)
    table.insert(answers, '0')
    table.insert(answers, n2s(offer_of[t.caps]))
  end
end
return ok(answers, offers)
