// Test plugin `misbehave_js`: a JavaScript strategy that tries what the sandbox must stop, chosen by the task
// type: `loop` never returns (fuel or the deadline must stop it), `memory` allocates without end (the memory cap
// must stop it); anything else gets the first candidate.

export const selector = {
  init(config) {},

  select(ctx, task, candidates, details) {
    if (task.taskType === "loop") {
      for (;;) {}
    }
    if (task.taskType === "memory") {
      const hoard = [];
      for (let i = 0; ; i++) hoard.push(new Uint8Array(8 << 20).fill(i & 255, 0, 1));
    }
    return 0;
  },
};
