#!/usr/bin/env python3
"""A minimal aragora-cp agent over REST, standard library only.

Registers with capabilities, heartbeats in a background thread, takes work with a blocking claim, "works" (returns
the payload with every string upper-cased), completes with the lease, and unregisters on Ctrl-C, SIGTERM or after
--max-tasks tasks. A 409 on start or complete means the lease was lost (the task was cancelled, timed out or given
to another agent): the agent drops the task and goes on.

    cargo run -p aragora-cp -- serve                      # prints an admin token
    python3 examples/python/agent.py --token <that token> --capabilities code,analysis
"""

import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

API_PREFIX = "/api/v1/control-plane"


class ApiError(Exception):
    """A refused request: the HTTP status, the server's error code and its detail."""

    def __init__(self, status, code, detail):
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class Client:
    """JSON over HTTP with a bearer token."""

    def __init__(self, server, token):
        self.base = server.rstrip("/") + API_PREFIX
        self.token = token

    def call(self, method, path, body=None, timeout=30.0):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            try:
                problem = json.loads(text)
            except ValueError:
                problem = {}
            raise ApiError(error.code, problem.get("code", ""), problem.get("detail", text)) from None
        return json.loads(text) if text else {}


def shout(value):
    """The "work": the payload with every string upper-cased."""
    if isinstance(value, str):
        return value.upper()
    if isinstance(value, list):
        return [shout(item) for item in value]
    if isinstance(value, dict):
        return {key: shout(item) for key, item in value.items()}
    return value


class Agent:
    def __init__(self, client, args):
        self.client = client
        self.args = args
        self.agent_id = args.agent_id
        # A new session per process: if this agent id is started twice, the server revokes the older process's
        # leases instead of letting two processes believe they hold the same task.
        self.session_id = uuid.uuid4().hex
        self.stop = threading.Event()
        self.heartbeat_interval = 10.0
        self.lock = threading.Lock()
        self.current = set()

    def log(self, message):
        print(f"[{self.agent_id}] {message}", flush=True)

    def register(self):
        body = {
            "agent_id": self.agent_id,
            "capabilities": self.args.capabilities,
            "model": self.args.model,
            "provider": self.args.provider,
            "session_id": self.session_id,
        }
        agent = self.client.call("POST", "/agents", body)
        self.log(f"registered with capabilities {', '.join(agent.get('capabilities', []))}")

    def heartbeats(self):
        while not self.stop.wait(self.heartbeat_interval):
            with self.lock:
                current = sorted(self.current)
            body = {"session_id": self.session_id, "current_task_ids": current}
            try:
                answer = self.client.call("POST", f"/agents/{self.agent_id}/heartbeat", body)
            except (ApiError, OSError) as error:
                # A missed beat is not fatal: the server waits HEARTBEAT_TIMEOUT before calling the agent offline.
                self.log(f"heartbeat failed: {error}")
                continue
            self.heartbeat_interval = float(answer.get("heartbeat_interval") or self.heartbeat_interval)
            for revoked in answer.get("revoked", []):
                self.log(f"task {revoked.get('task_id')} was taken away ({revoked.get('reason')})")

    def claim(self):
        body = {"agent_id": self.agent_id, "block_ms": self.args.block_ms, "session_id": self.session_id}
        # The server answers within block_ms; the socket timeout only guards against a server that went away.
        answer = self.client.call("POST", "/tasks/claim", body, timeout=self.args.block_ms / 1000 + 30)
        if answer.get("task") is None and answer.get("reason"):
            self.log(f"no work for now: {answer['reason']}")
        return answer.get("task")

    def work(self, task):
        """Runs one task; True if this agent completed it, False if the lease was lost."""
        task_id, lease = task["task_id"], {"lease_id": task["lease_id"]}
        with self.lock:
            self.current.add(task_id)
        try:
            self.client.call("POST", f"/tasks/{task_id}/start", lease)
            if self.args.work_ms:
                time.sleep(self.args.work_ms / 1000)
            result = self.result(task)
            self.client.call("POST", f"/tasks/{task_id}/complete", {**lease, "result": result})
            self.log(f"completed {task_id} ({task.get('task_type')}, {task.get('priority')})")
            return True
        except ApiError as error:
            if error.status != 409:
                raise
            self.log(f"lease on {task_id} lost ({error.code or 'conflict'}): dropping it")
            return False
        finally:
            with self.lock:
                self.current.discard(task_id)

    def result(self, task):
        """What the agent answers for `task` (a subclass answers otherwise: deliberation_agent.py)."""
        return {"agent_id": self.agent_id, "output": shout(task.get("payload"))}

    def run(self):
        self.register()
        beating = threading.Thread(target=self.heartbeats, name="heartbeats", daemon=True)
        beating.start()
        completed = 0
        try:
            while self.args.max_tasks == 0 or completed < self.args.max_tasks:
                try:
                    task = self.claim()
                except OSError as error:
                    # The server restarting or a network blip: keep the agent alive and ask again shortly.
                    self.log(f"claim failed ({error}); retrying in 2 s")
                    time.sleep(2)
                    continue
                if task is not None and self.work(task):
                    completed += 1
        finally:
            self.stop.set()
            self.log(f"stopping after {completed} completed task(s)")
            self.unregister()

    def unregister(self):
        # Unregistering hands any task still held back to the queue at once, instead of after HEARTBEAT_TIMEOUT.
        try:
            self.client.call("DELETE", f"/agents/{self.agent_id}")
            self.log("unregistered")
        except (ApiError, OSError) as error:
            self.log(f"could not unregister: {error}")


def parse_args(argv, description="A minimal aragora-cp agent (standard library only).", capabilities="code",
               extend=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--server", default=os.environ.get("ARAGORA_SERVER", "http://127.0.0.1:8080"),
                        help="the server's base URL (env ARAGORA_SERVER; default %(default)s)")
    parser.add_argument("--token", default=os.environ.get("ARAGORA_TOKEN"),
                        help="a bearer token (env ARAGORA_TOKEN; `aragora-cp serve` prints an admin token)")
    parser.add_argument("--agent-id", default=os.environ.get("AGENT_ID", f"python-agent-{os.getpid()}"),
                        help="the agent id (env AGENT_ID)")
    parser.add_argument("--capabilities", default=os.environ.get("AGENT_CAPABILITIES", capabilities),
                        help="comma-separated capabilities (env AGENT_CAPABILITIES; default %(default)s)")
    parser.add_argument("--model", default="python-example")
    parser.add_argument("--provider", default="example")
    parser.add_argument("--max-tasks", type=int, default=0, help="exit after completing N tasks (0: run until stopped)")
    parser.add_argument("--block-ms", type=int, default=5000, help="how long one claim waits for work (0 to 60000)")
    parser.add_argument("--work-ms", type=int, default=0, help="pretend each task takes this long")
    if extend is not None:
        extend(parser)
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("no token: pass --token or set ARAGORA_TOKEN")
    args.capabilities = [c.strip() for c in args.capabilities.split(",") if c.strip()]
    if args.max_tasks < 0:
        parser.error("--max-tasks must be 0 or more")
    if not 0 <= args.block_ms <= 60000:
        parser.error("--block-ms must be 0 to 60000")
    if args.work_ms < 0:
        parser.error("--work-ms must be 0 or more")
    return args


def on_signal(_signum, _frame):
    # SIGTERM (docker stop, systemd) leaves the way Ctrl-C does: through the `finally` that unregisters.
    raise KeyboardInterrupt


def main(argv, agent_class=None, args=None):
    args = args or parse_args(argv)
    name = os.path.basename(sys.argv[0]) or "agent.py"
    # Set for SIGINT too: a process started in the background by a script inherits SIGINT ignored, and Python then
    # installs no Ctrl-C handler of its own.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    agent = (agent_class or Agent)(Client(args.server, args.token), args)
    try:
        agent.run()
    except KeyboardInterrupt:
        return 130
    except ApiError as error:
        hint = {401: " (check --token)", 403: " (the token lacks a permission)"}.get(error.status, "")
        print(f"{name}: the server refused a request: {error}{hint}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"{name}: cannot reach {args.server}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
