"""Test plugin `forbidden_import_py`: a Python strategy that reads a key-value store, built against the world
`strategy-with-store` of `plugins/testing/forbidden_import/wit`, so the component imports `wasi:keyvalue`, which
is outside the sandbox's allowlist: the host must refuse it at load, naming the interface.
"""

from wit_world import exports
from wit_world.imports import store


class Selector(exports.Selector):
    def init(self, config: str) -> None:
        pass

    def select(self, ctx, task, candidates, details) -> int:
        return store.get("choice") % len(candidates)
