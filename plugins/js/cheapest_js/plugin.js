// Strategy `cheapest_js`: the waiting agent with the lowest `cost` label gets the task.
//
// Agents without a numeric `cost` come last; ties go to the agent with fewer tasks in flight, then to the lower
// index. Build: componentize-js plugin.js --wit ../../../wit --world-name strategy --disable http fetch-event \
//   -o cheapest_js.wasm

let label = "cost";

export const selector = {
  init(config) {
    label = JSON.parse(config).cost_label ?? "cost";
  },

  select(ctx, task, candidates, details) {
    if (details.length !== candidates.length) throw "details missing: the manifest must list the cost label";
    const cost = (index) => {
      const found = details[index].labels.find(([key]) => key === label);
      // Number("") is 0: an empty label is no price, as in Python.
      const value = found === undefined || found[1].trim() === "" ? NaN : Number(found[1]);
      return Number.isFinite(value) ? value : Infinity;
    };
    let best = 0;
    for (let i = 1; i < candidates.length; i++) {
      const [a, b] = [cost(i), cost(best)];
      if (a < b || (a === b && candidates[i].inFlight < candidates[best].inFlight)) best = i;
    }
    return best;
  },
};
