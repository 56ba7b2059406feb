//! The agent registry: service discovery. Registration (validated, passed through the register policies, then
//! an upsert in the store), heartbeats, pause/resume, lookups and listings. Liveness itself is the store's:
//! heartbeats push an agent's expiry forward and the sweeper marks silent agents offline.

use std::sync::Arc;

use crate::model::{Agent, AgentStatus, HeartbeatRequest, RegisterRequest};
use crate::scheduler::{EngineError, Scheduler, policies_on_register};
use crate::store::{AgentFilter, AgentRegistration, HeartbeatOutcome, Registered, Store, StoreError};

/// The registry; cheap to clone.
#[derive(Clone)]
pub struct AgentRegistry {
    store: Arc<dyn Store>,
    scheduler: Arc<Scheduler>,
}

impl AgentRegistry {
    /// A registry over the scheduler's store (the scheduler also keeps the violation log policies write to).
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        AgentRegistry { store: scheduler.store().clone(), scheduler }
    }

    /// Registers (or re-registers) an agent after the register policies.
    pub async fn register(&self, request: RegisterRequest) -> Result<Registered, EngineError> {
        let (capabilities, max_concurrent_tasks) = request.validate()?;
        let mut registration = AgentRegistration {
            agent_id: request.agent_id,
            capabilities,
            model: request.model,
            provider: request.provider,
            metadata: request.metadata,
            max_concurrent_tasks,
            health_url: request.health_url,
            status: request.status.unwrap_or(AgentStatus::Ready),
            session_id: request.session_id,
        };
        policies_on_register(&self.scheduler, &mut registration).await?;
        Ok(self.store.register(registration).await?)
    }

    /// Records a heartbeat.
    pub async fn heartbeat(
        &self,
        agent_id: &str,
        heartbeat: HeartbeatRequest,
    ) -> Result<HeartbeatOutcome, EngineError> {
        heartbeat.validate()?;
        Ok(self.store.heartbeat(agent_id, &heartbeat).await?)
    }

    /// Removes an agent (its work is requeued).
    pub async fn unregister(&self, agent_id: &str) -> Result<(), EngineError> {
        Ok(self.store.unregister(agent_id).await?)
    }

    /// Pauses (no new work) or resumes an agent.
    pub async fn set_paused(&self, agent_id: &str, paused: bool) -> Result<Agent, EngineError> {
        Ok(self.store.set_paused(agent_id, paused).await?)
    }

    /// One agent.
    pub async fn get(&self, agent_id: &str) -> Result<Agent, EngineError> {
        self.store.get_agent(agent_id).await?.ok_or_else(|| StoreError::AgentNotFound(agent_id.to_string()).into())
    }

    /// Agents, filtered by capability and availability.
    pub async fn list(&self, filter: &AgentFilter) -> Result<Vec<Agent>, EngineError> {
        Ok(self.store.list_agents(filter).await?)
    }
}
