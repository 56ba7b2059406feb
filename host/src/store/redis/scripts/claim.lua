-- claim(agent, has_caps, caps, max_tasks, session|'', wait token|'', wait lifetime ms, lease count, lease ids...):
-- grants the best pending tasks the agent can take, or registers its waiting claim when there are none (one step,
-- so no submit falls between the look and the registration). Answers the claim reply (lib.lua `claim_reply`).
local answer, e = claim(claim_args(1))
if e then return fail(e) end
return ok(claim_reply(answer))
