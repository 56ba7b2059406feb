// BullMQ under the load `aragora-cp bench compare --redis` puts on the control plane: SUBMITTERS concurrent
// producers adding one job at a time, one Worker with AGENTS concurrent slots completing each job at once, TASKS jobs
// in all, on the Redis at REDIS_URL (a fresh queue name per run). Prints tasks/s, add latency percentiles and the
// Redis main thread's CPU per task (INFO cpu before and after), as JSON with --json.
//
//   npm ci && REDIS_URL=redis://127.0.0.1:6390 node bench.mjs --agents 50 --submitters 16 --tasks 20000
import { Queue, Worker } from "bullmq";
import IORedis from "ioredis";

const option = (name, fallback) => {
  const at = process.argv.indexOf(`--${name}`);
  return at > 0 ? Number(process.argv[at + 1]) : fallback;
};
const AGENTS = option("agents", 50);
const SUBMITTERS = option("submitters", 16);
const TASKS = option("tasks", 20000);
const JSON_OUT = process.argv.includes("--json");
const url = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";

const connection = new IORedis(url, { maxRetriesPerRequest: null });
const name = `bench-${Math.random().toString(16).slice(2, 10)}`;
const queue = new Queue(name, { connection });

async function redisCpu() {
  const info = await connection.info("cpu");
  const field = (key) => Number((info.match(new RegExp(`^${key}:([0-9.]+)`, "m")) ?? [])[1]);
  const user = field("used_cpu_user_main_thread");
  const system = field("used_cpu_sys_main_thread");
  return Number.isFinite(user + system) ? user + system : field("used_cpu_user") + field("used_cpu_sys");
}

let completed = 0;
let finish;
const done = new Promise((resolve) => (finish = resolve));
const worker = new Worker(name, async () => ({ ok: true }), {
  connection: new IORedis(url, { maxRetriesPerRequest: null }),
  concurrency: AGENTS,
  removeOnComplete: { count: 0 },
});
worker.on("completed", () => {
  completed += 1;
  if (completed === TASKS) finish();
});
await worker.waitUntilReady();

const cpuBefore = await redisCpu();
const started = performance.now();
const latencies = [];
let next = 0;
async function submitter() {
  while (next < TASKS) {
    next += 1;
    const at = performance.now();
    await queue.add("bench", { n: next }, { removeOnComplete: true });
    latencies.push(performance.now() - at);
  }
}
await Promise.all(Array.from({ length: SUBMITTERS }, submitter));
await done;
const seconds = (performance.now() - started) / 1000;
const cpu = (await redisCpu()) - cpuBefore;
latencies.sort((a, b) => a - b);
const at = (p) => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))];
const report = {
  system: "bullmq",
  version: "6.7.6",
  agents: AGENTS,
  submitters: SUBMITTERS,
  tasks: completed,
  seconds,
  tasks_per_second: completed / seconds,
  add_p50_ms: at(50),
  add_p99_ms: at(99),
  redis_cpu_per_task_us: (cpu * 1e6) / completed,
};
if (JSON_OUT) {
  console.log(JSON.stringify(report, null, 2));
} else {
  console.log(
    `bullmq ${report.version}: ${AGENTS} concurrent workers, ${SUBMITTERS} submitters, ${completed} tasks in ` +
      `${seconds.toFixed(1)} s: ${report.tasks_per_second.toFixed(0)} tasks/s; add p50 ${report.add_p50_ms.toFixed(2)} ms, ` +
      `p99 ${report.add_p99_ms.toFixed(2)} ms; Redis ${report.redis_cpu_per_task_us.toFixed(0)} µs CPU per task`,
  );
}
await worker.close();
await queue.obliterate({ force: true });
await queue.close();
await connection.quit();
process.exit(0);
