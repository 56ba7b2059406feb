#!/usr/bin/env bash
# The guide's REST walk-through with curl: register an agent, submit a task, claim it, start and complete it with
# the lease, read the result, show the stats, unregister. Each step prints the request and the server's answer.
#
#   cargo run -p aragora-cp -- serve                  # prints an admin token
#   TOKEN=<that token> bash examples/curl/guide.sh    # SERVER defaults to http://127.0.0.1:8080
#
# Needs curl, and python3 only to pull fields out of JSON answers (jq is not assumed to be installed).
set -euo pipefail

SERVER="${SERVER:-http://127.0.0.1:8080}"
API="${SERVER%/}/api/v1/control-plane"
AGENT_ID="${AGENT_ID:-guide-agent}"

for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "guide.sh: $tool is required but not installed" >&2; exit 2; }
done
if [ -z "${TOKEN:-}" ]; then
  echo "guide.sh: set TOKEN to a bearer token (\`aragora-cp serve\` prints an admin token at start)" >&2
  exit 2
fi

# A capability unique to this run, required by the task and held by the agent, so that the claim below takes this
# run's task even on a server that holds other pending work.
RUN_CAPABILITY="run:$(date +%s)-$$"

step() { printf '\n==> %s\n' "$*"; }

# The answers of `api` are captured with $(...), so it shows each request on fd 3, a copy of the real stdout.
exec 3>&1

# api METHOD PATH [JSON]: prints the answer body; exits with the server's problem detail on a 4xx or 5xx.
api() {
  local method="$1" path="$2" body="${3:-}" answer status
  echo "    $method $path${body:+ $body}" >&3
  local args=(-sS -X "$method" "$API$path" -H "Authorization: Bearer $TOKEN" -w $'\n%{http_code}')
  if [ -n "$body" ]; then
    args+=(-H 'content-type: application/json' -d "$body")
  fi
  answer="$(curl "${args[@]}")" || { echo "guide.sh: cannot reach $SERVER (is the server running?)" >&2; exit 1; }
  status="${answer##*$'\n'}"
  answer="${answer%$'\n'*}"
  if [ "$status" -ge 400 ]; then
    echo "guide.sh: $method $path answered $status: $answer" >&2
    exit 1
  fi
  printf '%s\n' "$answer"
}

# field NAME < json: one field of a JSON object (dots go deeper: task.lease_id); objects come out as JSON.
field() {
  python3 -c '
import json, sys
value = json.load(sys.stdin)
for key in sys.argv[1].split("."):
    value = value[key] if isinstance(value, dict) else None
print(json.dumps(value) if isinstance(value, (dict, list)) or value is None else value)
' "$1"
}

step "1. Register agent $AGENT_ID with capabilities code and $RUN_CAPABILITY"
registered="$(api POST /agents "{\"agent_id\": \"$AGENT_ID\", \"capabilities\": [\"code\", \"$RUN_CAPABILITY\"], \
\"model\": \"example-model\", \"provider\": \"example\"}")"
echo "    status: $(field status <<<"$registered"), session: $(field session_id <<<"$registered")"

step "2. Heartbeat (agents send one every HEARTBEAT_INTERVAL; the answer lists work taken away from them)"
api POST "/agents/$AGENT_ID/heartbeat" '{"status": "ready"}' | sed 's/^/    /'

step "3. Submit a task (the idempotency key makes a retried submit safe)"
submitted="$(api POST /tasks "{\"task_type\": \"code\", \"priority\": \"high\", \
\"required_capabilities\": [\"code\", \"$RUN_CAPABILITY\"], \"payload\": {\"prompt\": \"write hello world\"}, \
\"idempotency_key\": \"guide-$RUN_CAPABILITY\"}")"
TASK_ID="$(field task_id <<<"$submitted")"
echo "    task_id: $TASK_ID"

step "4. Claim it as $AGENT_ID (a long poll: waits up to block_ms for work)"
claimed="$(api POST /tasks/claim "{\"agent_id\": \"$AGENT_ID\", \"block_ms\": 5000}")"
if [ "$(field task.task_id <<<"$claimed")" != "$TASK_ID" ]; then
  echo "guide.sh: the claim did not return task $TASK_ID: $claimed" >&2
  exit 1
fi
LEASE_ID="$(field task.lease_id <<<"$claimed")"
echo "    claimed $TASK_ID, lease $LEASE_ID, attempt $(field task.attempt <<<"$claimed")"

step "5. Start it (status running), fenced by the lease"
started="$(api POST "/tasks/$TASK_ID/start" "{\"lease_id\": \"$LEASE_ID\"}")"
echo "    status: $(field status <<<"$started")"

step "6. Complete it with a result, fenced by the lease"
completed="$(api POST "/tasks/$TASK_ID/complete" "{\"lease_id\": \"$LEASE_ID\", \
\"result\": {\"code\": \"print('hello world')\"}}")"
echo "    status: $(field status <<<"$completed")"

step "7. Read the result (?wait= would long-poll until the task ends)"
task="$(api GET "/tasks/$TASK_ID?wait=5")"
echo "    status: $(field status <<<"$task"), by: $(field assigned_agent <<<"$task"), result: $(field result <<<"$task")"

step "8. Stats"
stats="$(api GET /stats)"
echo "    agents: $(field registry.total_agents <<<"$stats"), pending: $(field scheduler.pending_tasks <<<"$stats"), \
running: $(field scheduler.running_tasks <<<"$stats"), completed: $(field scheduler.by_status.completed <<<"$stats")"

step "9. Unregister $AGENT_ID"
api DELETE "/agents/$AGENT_ID" >/dev/null
echo "    done: task $TASK_ID completed"
