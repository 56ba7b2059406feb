//! `cargo run -p aragora-cp-examples --bin agent-loop`: an embedded control plane, three agents running the
//! guide's loop, twenty tasks submitted and awaited, then a clean shutdown (drain, unregister).

use std::time::Duration;

use aragora_cp::config::Config;
use aragora_cp::coordinator::ControlPlaneCoordinator;
use aragora_cp::model::SubmitRequest;
use aragora_cp_examples::agent::run_agent;
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cp = ControlPlaneCoordinator::create(Config::default()).await?;
    let stop = CancellationToken::new();
    let agents: Vec<_> = ["claude-1", "gpt-1", "gemini-1"]
        .into_iter()
        .map(|id| {
            tokio::spawn(run_agent(cp.clone(), id.into(), vec!["code".into()], Duration::from_millis(20), stop.clone()))
        })
        .collect();

    let mut task_ids = Vec::new();
    for n in 0..20 {
        let request = SubmitRequest {
            task_type: "code".into(),
            payload: Some(json!({"n": n}).into()),
            required_capabilities: vec!["code".into()],
            idempotency_key: Some(format!("example-{n}")),
            ..Default::default()
        };
        task_ids.push(cp.submit_task(request, "example").await?.task_id);
    }
    for task_id in &task_ids {
        let task = cp.wait_for_result(task_id, Duration::from_secs(30)).await?;
        println!("{task_id} {} by {}", task.status.as_str(), task.assigned_agent.unwrap_or_default());
    }

    stop.cancel();
    for agent in agents {
        let report = agent.await??;
        println!("{} completed {} tasks, drained and unregistered", report.agent_id, report.completed);
    }
    cp.shutdown().await;
    Ok(())
}
