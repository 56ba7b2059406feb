-- complete_and_claim(task, fence kind, fence value, result, reported latency|'', then the claim's arguments as in
-- claim.lua): the completion and the next claim in one step, refused before any change when the claimant's session is
-- stale.
local id, kind, fence, result, reported = arg(1), arg(2), arg(3), arg(4), arg(5)
local agent, caps, has_caps, max_tasks, session, leases, wait = claim_args(6)
local e = check_session(agent, session)
if e then return fail(e) end
e = complete(id, kind, fence, result, reported)
if e then return fail(e) end
local done = task_view(id)
local answer
answer, e = claim(agent, caps, has_caps, max_tasks, session, leases, wait)
if e then return fail(e) end
return ok(done, claim_reply(answer))
