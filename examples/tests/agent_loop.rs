//! The example agent loop does what the guide says: every task completes, each by one agent, and the agents
//! drain and unregister on shutdown.

use std::time::Duration;

use aragora_cp::config::Config;
use aragora_cp::coordinator::ControlPlaneCoordinator;
use aragora_cp::model::AgentFilter;
use aragora_cp::model::{SubmitRequest, TaskStatus};
use aragora_cp_examples::agent::run_agent;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_complete_every_task_then_drain_and_unregister() {
    let cp = ControlPlaneCoordinator::create(Config::default()).await.unwrap();
    let stop = CancellationToken::new();
    let agents: Vec<_> = (0..3)
        .map(|i| {
            tokio::spawn(run_agent(cp.clone(), format!("agent-{i}"), vec![], Duration::from_millis(5), stop.clone()))
        })
        .collect();
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(
            cp.submit_task(SubmitRequest { task_type: "t".into(), ..Default::default() }, "me").await.unwrap().task_id,
        );
    }
    for id in &ids {
        let task = cp.wait_for_result(id, Duration::from_secs(20)).await.unwrap();
        assert_eq!(task.status, TaskStatus::Completed, "{id}");
        assert_eq!(task.attempt, 1, "claimed exactly once");
    }
    stop.cancel();
    let completed: usize = futures_sum(agents).await;
    assert_eq!(completed, 30);
    assert!(cp.list_agents(&AgentFilter::default()).await.unwrap().is_empty(), "every agent unregistered");
    cp.shutdown().await;
}

async fn futures_sum(
    agents: Vec<tokio::task::JoinHandle<anyhow::Result<aragora_cp_examples::agent::AgentReport>>>,
) -> usize {
    let mut total = 0;
    for agent in agents {
        total += agent.await.unwrap().unwrap().completed;
    }
    total
}
