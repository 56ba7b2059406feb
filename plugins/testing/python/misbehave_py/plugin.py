"""Test plugin `misbehave_py`: a Python strategy that tries what the sandbox must stop, chosen by the task type.

- `loop`: never returns (fuel or the deadline must stop it);
- `memory`: allocates without end (the memory cap must stop it);
- `file`: reads /etc/passwd (there is no file to read);
- `socket`: connects to 127.0.0.1 on the port in the task's `port` label (there is no network);
- anything else: the first candidate.
"""

import socket

from componentize_py_types import Err
from wit_world import exports


class Selector(exports.Selector):
    def init(self, config: str) -> None:
        pass

    def select(self, ctx, task, candidates, details) -> int:
        if task.task_type == "loop":
            while True:
                pass
        if task.task_type == "memory":
            hoard = []
            while True:
                hoard.append(bytearray(1 << 20))
        if task.task_type == "file":
            with open("/etc/passwd") as f:
                raise Err(f"read {len(f.read())} bytes of /etc/passwd")
        if task.task_type == "socket":
            port = int(dict(task.labels)["port"])
            connection = socket.create_connection(("127.0.0.1", port), timeout=1)
            connection.sendall(b"escaped")
            raise Err("connected")
        return 0
