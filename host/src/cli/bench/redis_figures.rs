//! What a run cost the Redis behind the server: its main thread's CPU time (`INFO cpu`) and the commands it ran
//! (`INFO commandstats`), read before and after the run and divided by the tasks completed. `bench load
//! --redis-url` and `bench compare --redis` report them beside the server's own CPU per task, so a change to the
//! store's scripts is judged by what the single Redis thread spends, which bounds a fleet on one Redis.

use std::collections::BTreeMap;

use serde::Serialize;

/// One reading of a Redis's counters.
#[derive(Clone, Debug, Default)]
pub struct RedisReading {
    /// Main-thread CPU seconds (user + system); the whole process's when the Redis is older than 6.
    cpu_seconds: f64,
    /// Per command: calls and µs spent in them.
    commands: BTreeMap<String, (u64, u64)>,
}

/// A command's share of a run, per completed task.
#[derive(Clone, Debug, Serialize)]
pub struct CommandCost {
    /// The command (`evalsha`, `fcall`, `xread`…).
    pub command: String,
    /// Calls per task.
    pub calls_per_task: f64,
    /// µs of Redis time per task inside this command.
    pub usec_per_task: f64,
}

/// What a run cost the Redis.
#[derive(Clone, Debug, Serialize)]
pub struct RedisFigures {
    /// Main-thread CPU seconds over the run.
    pub cpu_seconds: f64,
    /// Main-thread CPU per completed task, µs.
    pub cpu_per_task_us: f64,
    /// Commands per completed task, those run inside scripts included.
    pub calls_per_task: f64,
    /// Script calls per completed task (`evalsha`, `eval`, `fcall` and their read-only forms).
    pub scripts_per_task: f64,
    /// The commands that took the most time, most first (at most 6).
    pub top: Vec<CommandCost>,
}

/// Reads the counters of the Redis at `url`; `None` (with a warning) when it cannot be reached.
pub async fn read(url: &str) -> Option<RedisReading> {
    let reading = async {
        let client = redis::Client::open(url)?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let cpu: String = redis::cmd("INFO").arg("cpu").query_async(&mut connection).await?;
        let commands: String = redis::cmd("INFO").arg("commandstats").query_async(&mut connection).await?;
        Ok::<_, redis::RedisError>(parse(&cpu, &commands))
    };
    match reading.await {
        Ok(reading) => Some(reading),
        Err(error) => {
            eprintln!("warning: cannot read Redis counters at {url}: {error}");
            None
        }
    }
}

/// The counters in `INFO cpu` and `INFO commandstats` text.
fn parse(cpu: &str, commands: &str) -> RedisReading {
    let field = |name: &str| {
        cpu.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<f64>().ok())
    };
    let cpu_seconds = match (field("used_cpu_user_main_thread"), field("used_cpu_sys_main_thread")) {
        (Some(user), Some(system)) => user + system,
        _ => field("used_cpu_user").unwrap_or(0.0) + field("used_cpu_sys").unwrap_or(0.0),
    };
    let mut counted = BTreeMap::new();
    for line in commands.lines() {
        let Some((name, stats)) = line.trim().strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else {
            continue;
        };
        let value = |key: &str| {
            stats.split(',').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok()).unwrap_or(0)
        };
        counted.insert(name.to_string(), (value("calls"), value("usec")));
    }
    RedisReading { cpu_seconds, commands: counted }
}

/// The cost of what happened between two readings, per task.
pub fn between(before: &RedisReading, after: &RedisReading, tasks: u64) -> RedisFigures {
    let per_task = |n: f64| if tasks == 0 { 0.0 } else { n / tasks as f64 };
    let mut top: Vec<CommandCost> = after
        .commands
        .iter()
        .map(|(command, (calls, usec))| {
            let (calls_before, usec_before) = before.commands.get(command).copied().unwrap_or((0, 0));
            CommandCost {
                command: command.clone(),
                calls_per_task: per_task(calls.saturating_sub(calls_before) as f64),
                usec_per_task: per_task(usec.saturating_sub(usec_before) as f64),
            }
        })
        .filter(|cost| cost.calls_per_task > 0.0)
        .collect();
    let calls_per_task = top.iter().map(|c| c.calls_per_task).sum();
    let scripts_per_task =
        top.iter().filter(|c| SCRIPT_CALLS.contains(&c.command.as_str())).map(|c| c.calls_per_task).sum();
    top.sort_by(|a, b| b.usec_per_task.total_cmp(&a.usec_per_task));
    top.truncate(6);
    let cpu_seconds = (after.cpu_seconds - before.cpu_seconds).max(0.0);
    RedisFigures { cpu_seconds, cpu_per_task_us: per_task(cpu_seconds * 1e6), calls_per_task, scripts_per_task, top }
}

/// The commands that run a script.
const SCRIPT_CALLS: [&str; 6] = ["evalsha", "eval", "fcall", "evalsha_ro", "eval_ro", "fcall_ro"];

impl RedisFigures {
    /// `480 µs CPU, 11.0 scripts and 140.0 commands (inside scripts too) per task (evalsha 10.1× 400 µs, …)`.
    pub fn summary(&self) -> String {
        let top: Vec<String> = self
            .top
            .iter()
            .take(3)
            .map(|c| format!("{} {:.1}× {:.0} µs", c.command, c.calls_per_task, c.usec_per_task))
            .collect();
        format!(
            "{:.0} µs CPU, {:.1} scripts and {:.1} commands (inside scripts too) per task ({})",
            self.cpu_per_task_us,
            self.scripts_per_task,
            self.calls_per_task,
            top.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_subtract_into_per_task_costs() {
        let cpu = "# CPU\r\nused_cpu_sys:9.5\r\nused_cpu_user:20.5\r\nused_cpu_sys_main_thread:1.0\r\n\
                   used_cpu_user_main_thread:2.0\r\n";
        let before =
            parse(cpu, "cmdstat_evalsha:calls=100,usec=5000,usec_per_call=50.00\r\ncmdstat_ping:calls=1,usec=1");
        let cpu = "used_cpu_sys_main_thread:1.5\r\nused_cpu_user_main_thread:2.5\r\n";
        let after = parse(
            cpu,
            "cmdstat_evalsha:calls=1100,usec=45000\r\ncmdstat_xread:calls=50,usec=500\r\ncmdstat_ping:calls=1,usec=1",
        );
        let figures = between(&before, &after, 100);
        assert!((figures.cpu_per_task_us - 10_000.0).abs() < 1e-6, "1 s over 100 tasks");
        assert!((figures.calls_per_task - 10.5).abs() < 1e-9, "ping did not move");
        assert!((figures.scripts_per_task - 10.0).abs() < 1e-9, "xread runs no script");
        assert_eq!(figures.top[0].command, "evalsha");
        assert!((figures.top[0].usec_per_task - 400.0).abs() < 1e-9);
        assert_eq!(figures.top.len(), 2);
        assert!(figures.summary().starts_with("10000 µs CPU, 10.0 scripts and 10.5 commands"), "{}", figures.summary());
        let old = parse("used_cpu_sys:1.0\nused_cpu_user:2.0\n", "");
        assert!((old.cpu_seconds - 3.0).abs() < 1e-9, "a Redis without main-thread figures: the process's");
    }
}
