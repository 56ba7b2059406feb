"""Policy `payload_guard_py`: refuses submits whose payload is too large, and keeps sensitive work in approved places.

- a payload over `max_payload_bytes` (config) is denied, naming the size;
- a task of type `sensitive` gets the required capability `region:approved`, so only agents granted it may take it;
- a critical task is allowed with a warning (it jumps every queue).
Build: componentize-py -d ../../../wit -w policy componentize plugin -o payload_guard_py.wasm
"""

import json

from wit_world import exports
from wit_world.imports import types


# Set by `init`. Module state, not `self`: componentize-py may call each export on a new instance of the class.
max_payload_bytes = 65536


class Evaluator(exports.Evaluator):
    def init(self, config: str) -> None:
        global max_payload_bytes
        max_payload_bytes = int(json.loads(config).get("max_payload_bytes", 65536))

    def evaluate(self, ctx, input) -> types.Decision:
        if not isinstance(input, types.PolicyInput_Submit):
            return types.Decision_Allow()
        request = input.value
        if request.payload_bytes > max_payload_bytes:
            return types.Decision_Deny(
                f"payload of {request.payload_bytes} bytes is over the {max_payload_bytes} allowed"
            )
        if request.task.task_type == "sensitive":
            changes = types.SubmitChanges(priority=None, add_capabilities=["region:approved"], metadata=[])
            return types.Decision_Modify(types.Modification_Submit(changes))
        if request.task.priority == types.Priority.CRITICAL:
            return types.Decision_Warn("critical tasks jump every queue: use them sparingly")
        return types.Decision_Allow()
