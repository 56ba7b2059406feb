//! Health-probe plugins: judge an agent's health from what the host observed (heartbeat age, recent outcomes,
//! the HTTP check). The health monitor runs them every `PROBE_INTERVAL`; a failed probe reports `unknown`.

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::CallError;
use super::bindings::probe::{HealthProbe, HealthProbePre};
use super::bindings::{AgentInfo, CallContext, Observations, ProbeResult};
use super::instance::{CallReport, Sandbox, World};
use super::sandbox::HostState;

impl World for HealthProbe {
    type Pre = HealthProbePre<HostState>;

    fn pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
        HealthProbePre::new(pre)
    }

    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> wasmtime::Result<Self> {
        pre.instantiate(store)
    }

    fn init(&self, store: &mut Store<HostState>, config: &str) -> wasmtime::Result<Result<(), String>> {
        self.aragora_control_plane_prober().call_init(store, config)
    }
}

/// A loaded health-probe version.
pub struct ProbePlugin {
    pub(crate) sandbox: Sandbox<HealthProbe>,
}

impl ProbePlugin {
    /// Asks the probe for one agent's health.
    pub fn probe(
        &self,
        ctx: CallContext,
        agent: &AgentInfo,
        observed: &Observations,
    ) -> Result<(ProbeResult, CallReport), CallError> {
        self.sandbox.call(ctx.now_ms, ctx.seed, |bindings, store| {
            bindings.aragora_control_plane_prober().call_probe(store, ctx, agent, observed).map(Ok)
        })
    }

    pub(crate) fn trial(&self) -> Result<(), CallError> {
        let agent = AgentInfo {
            agent_id: "trial-agent".into(),
            model: "trial-model".into(),
            provider: "trial-provider".into(),
            capabilities: vec!["code".into()],
            labels: Vec::new(),
        };
        let observed = Observations {
            heartbeat_age_ms: 1_000,
            recent_successes: 9,
            recent_failures: 1,
            latency_p50_ms: 250,
            http: None,
        };
        self.probe(CallContext { now_ms: 1_700_000_000_000, seed: 7 }, &agent, &observed).map(|_| ())
    }
}
