"""Test plugin `misbehave_py`: a Python strategy that tries what the sandbox must stop, chosen by the task type.

- `loop`: never returns (fuel or the deadline must stop it);
- `memory`: allocates without end (the memory cap must stop it);
- `file`: reads /etc/passwd (there is no file to read);
- `tcp`: connects to 127.0.0.1 on the port in the task's `port` label (there is no network);
- `udp`: sends a datagram to that port;
- `environment`: counts the environment variables and arguments it sees (there are none);
- anything else: the first candidate.
The three last answer the error Python raised, by its class, so a test can tell a refusal from any failure.
"""

import os
import socket
import sys

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
        if task.task_type == "environment":
            raise Err(f"{len(os.environ)} variables, {len(sys.argv)} arguments")
        try:
            if task.task_type == "file":
                with open("/etc/passwd") as f:
                    raise Err(f"read {len(f.read())} bytes of /etc/passwd")
            if task.task_type in ("tcp", "udp"):
                # A numeric address: no name lookup, straight to the socket calls.
                address = ("127.0.0.1", int(dict(task.labels)["port"]))
                if task.task_type == "tcp":
                    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    connection.connect(address)
                    connection.sendall(b"escaped")
                else:
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"escaped", address)
                raise Err("sent")
        except OSError as error:
            raise Err(type(error).__name__)
        return 0
