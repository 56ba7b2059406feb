"""Strategy `cheapest_py`: the waiting agent with the lowest `cost` label gets the task.

Agents without a numeric `cost` come last; ties go to the agent with fewer tasks in flight, then to the lower index.
Build: componentize-py -d ../../../wit -w strategy componentize plugin -o cheapest_py.wasm
"""

import json
import math

from componentize_py_types import Err
from wit_world import exports

UNPRICED = math.inf

# Set by `init`. Module state, not `self`: componentize-py may call each export on a new instance of the class.
cost_label = "cost"


class Selector(exports.Selector):
    def init(self, config: str) -> None:
        global cost_label
        cost_label = json.loads(config).get("cost_label", "cost")

    def select(self, ctx, task, candidates, details) -> int:
        if len(details) != len(candidates):
            raise Err("details missing: the manifest must list the cost label")

        def cost(index: int) -> float:
            try:
                value = float(dict(details[index].labels).get(cost_label, ""))
            except ValueError:
                return UNPRICED
            return value if math.isfinite(value) else UNPRICED

        return min(range(len(candidates)), key=lambda i: (cost(i), candidates[i].in_flight, i))
