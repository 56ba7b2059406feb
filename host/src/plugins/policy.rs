//! Policy plugins: allow, deny, warn about or modify submits, registrations and dispatches.
//!
//! This file only runs a policy and checks that its answer fits the stage; the engine decides what a decision
//! does (records violations, applies modifications, fails closed unless the manifest says `on_error = "allow"`).

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::CallError;
use super::bindings::policy::{Policy, PolicyPre};
use super::bindings::{CallContext, Decision, Modification, PolicyInput, SubmitRequest};
use super::instance::{CallReport, Sandbox, World};
use super::sandbox::HostState;
use super::strategy::trial_task;

impl World for Policy {
    type Pre = PolicyPre<HostState>;

    fn pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
        PolicyPre::new(pre)
    }

    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> wasmtime::Result<Self> {
        pre.instantiate(store)
    }

    fn init(&self, store: &mut Store<HostState>, config: &str) -> wasmtime::Result<Result<(), String>> {
        self.aragora_control_plane_evaluator().call_init(store, config)
    }
}

/// A loaded policy version.
pub struct PolicyPlugin {
    pub(crate) sandbox: Sandbox<Policy>,
}

impl PolicyPlugin {
    /// Asks the policy about one stage. A modification that does not fit the stage (a register change for a
    /// submit, any change for a dispatch) is a bad answer.
    pub fn evaluate(&self, ctx: CallContext, input: &PolicyInput) -> Result<(Decision, CallReport), CallError> {
        self.sandbox.call(ctx.now_ms, ctx.seed, |bindings, store| {
            let decision = bindings.aragora_control_plane_evaluator().call_evaluate(store, ctx, input)?;
            let fits = match (&decision, input) {
                (Decision::Modify(Modification::Submit(_)), PolicyInput::Submit(_)) => true,
                (Decision::Modify(Modification::Register(_)), PolicyInput::Register(_)) => true,
                (Decision::Modify(_), _) => false,
                _ => true,
            };
            Ok(if fits {
                Ok(decision)
            } else {
                Err(CallError::BadDecision(format!("a {} decision does not fit this stage", decision_name(&decision))))
            })
        })
    }

    pub(crate) fn trial(&self) -> Result<(), CallError> {
        let input = PolicyInput::Submit(SubmitRequest { task: trial_task(), payload_bytes: 2, payload: None });
        self.evaluate(CallContext { now_ms: 1_700_000_000_000, seed: 7 }, &input).map(|_| ())
    }
}

/// The decision's name as used in logs and JSON: `allow`, `deny`, `warn`, `modify`.
pub fn decision_name(decision: &Decision) -> &'static str {
    match decision {
        Decision::Allow => "allow",
        Decision::Deny(_) => "deny",
        Decision::Warn(_) => "warn",
        Decision::Modify(_) => "modify",
    }
}
