//! Plugins: agent-selection strategies, policies and health probes as sandboxed WebAssembly components.
//!
//! The lifecycle of a plugin version, with the file that owns each step:
//! - **load** (`loader.rs`): bytes + optional manifest → compiled, inspected (`runtime.rs`: world from the
//!   exports, imports against the allowlist of `sandbox.rs`), type-checked against its world. Once per version.
//! - **validate** (`loader.rs`): a fresh instance runs `init` and a trial call under the version's limits.
//! - **activate** (`registry.rs`): an atomic swap of the name's active version; precedence upload > file >
//!   built-in. Calls in flight keep the version they started on (they hold an `Arc`).
//! - **call** (`strategy.rs`, `policy.rs`, `probe.rs`, on `instance.rs`): fuel, deadline and memory cap per call.
//!
//! `watcher.rs` feeds the registry from `PLUGINS_DIR`; `builtin.rs` holds the embedded plugins; `rules.rs` turns an
//! Aragora-style rule set into the manifest of the built-in `rules_policy`. Bindings are
//! generated once, in `bindings.rs`, and the engine builds plugin inputs from the model only in `convert.rs`. Plugins never see the store or HTTP: the engine passes them plain records.

pub mod bindings;
pub mod builtin;
pub mod convert;
pub mod decision_log;
pub mod instance;
pub mod io;
pub mod loader;
pub mod manifest;
pub mod policy;
pub mod probe;
mod ready_io;
pub mod registry;
pub mod rollout;
pub mod rules;
pub mod runtime;
pub mod sandbox;
pub mod strategy;
pub mod watcher;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use instance::CallReport;
pub use loader::{PluginHandle, PluginStats, PluginVersion};
pub use manifest::Manifest;
pub use registry::{PluginEvent, PluginRegistry};
pub use runtime::{CallLimits, PluginRuntime, RuntimeOptions};
pub use strategy::{Answerer, Selection};
pub use watcher::PluginWatcher;

/// The three plugin worlds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    /// World `strategy`: chooses an agent for a task.
    Strategy,
    /// World `policy`: allows, denies, warns about or modifies submits, registrations and dispatches.
    Policy,
    /// World `health-probe`: judges an agent's health.
    #[serde(alias = "health-probe")]
    HealthProbe,
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PluginKind::Strategy => "strategy",
            PluginKind::Policy => "policy",
            PluginKind::HealthProbe => "health_probe",
        })
    }
}

/// Where a plugin version came from. The derived order is the precedence: a later variant shadows an earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PluginSource {
    /// Embedded in the binary.
    Builtin,
    /// `NAME.wasm` in `PLUGINS_DIR`.
    File,
    /// Uploaded over the API (fleet-wide).
    Upload,
}

impl fmt::Display for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PluginSource::Builtin => "builtin",
            PluginSource::File => "file",
            PluginSource::Upload => "upload",
        })
    }
}

/// Why a plugin version was not activated.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a WebAssembly component.
    #[error("not a plugin component: {0}")]
    NotAComponent(String),
    /// The component is larger than allowed.
    #[error("component is {size} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Size of the component.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// wasmtime could not compile it.
    #[error("compilation failed: {0}")]
    Compile(String),
    /// It imports an interface outside the sandbox's allowlist.
    #[error(
        "imports {0}, which plugins may not use (allowed: wasi:cli, wasi:io, wasi:random, wasi:clocks, and \
         wasi:filesystem and wasi:sockets with no directory and no network; never HTTP)"
    )]
    ForbiddenImport(String),
    /// It exports none (or several) of the plugin interfaces.
    #[error("exports none of aragora:control-plane/selector, evaluator or prober at version 0.1.x (exports: {0})")]
    UnknownWorld(String),
    /// Its manifest names another kind.
    #[error("the manifest says kind {declared} but the component is a {actual}")]
    KindMismatch {
        /// Kind in the manifest.
        declared: PluginKind,
        /// Kind of the component.
        actual: PluginKind,
    },
    /// Its manifest does not parse.
    #[error("manifest: {0}")]
    Manifest(String),
    /// Its exports do not match the world's types.
    #[error("type check against the {kind} world failed: {message}")]
    TypeCheck {
        /// The world.
        kind: PluginKind,
        /// wasmtime's message.
        message: String,
    },
    /// `init` refused the configuration or trapped.
    #[error("init failed: {0}")]
    Init(String),
    /// The trial call trapped, ran out of fuel or time, or answered nonsense.
    #[error("trial call failed: {0}")]
    Trial(CallError),
    /// The name is taken by a plugin of another kind (from another source).
    #[error("the name {name} belongs to a {existing} ({source_of_existing}); a {offered} cannot take it")]
    KindConflict {
        /// The plugin name.
        name: String,
        /// Kind of the versions already under the name.
        existing: PluginKind,
        /// Where that version comes from.
        source_of_existing: PluginSource,
        /// Kind of the version offered.
        offered: PluginKind,
    },
    /// A shadow or canary needs an active version of the name to stand beside.
    #[error("{0} has no active version for a shadow or canary to stand beside; install it normally first")]
    NoActiveVersion(String),
    /// The plugin name is not usable.
    #[error("invalid plugin name {0:?}: use 1 to 64 characters of [A-Za-z0-9_.-]")]
    InvalidName(String),
}

impl LoadError {
    /// Whether the rejection may not happen again with the same bytes: the trial call missed its wall-clock
    /// deadline, which a busy machine can cause.
    pub fn is_transient(&self) -> bool {
        matches!(self, LoadError::Trial(CallError::Deadline { .. }))
    }
}

/// Why a plugin call produced no answer. The server keeps serving; the failure is counted on the version.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CallError {
    /// The call burned all its fuel (an endless loop, or too much work).
    #[error("ran out of fuel ({fuel} units)")]
    OutOfFuel {
        /// The fuel limit.
        fuel: u64,
    },
    /// The call ran past its wall-clock deadline.
    #[error("exceeded its deadline of {deadline:?}")]
    Deadline {
        /// The deadline.
        deadline: Duration,
    },
    /// The guest asked for more memory than its cap.
    #[error("exceeded its memory limit of {limit_bytes} bytes")]
    Memory {
        /// The cap.
        limit_bytes: usize,
    },
    /// The guest trapped (panic, unreachable, out-of-bounds access...).
    #[error("trapped: {0}")]
    Trap(String),
    /// A fresh instance's `init` returned an error.
    #[error("init failed: {0}")]
    Init(String),
    /// The guest returned an error of its own.
    #[error("returned an error: {0}")]
    Guest(String),
    /// A strategy chose an index outside the candidate list.
    #[error("chose index {index} among {candidates} candidates")]
    BadIndex {
        /// The index returned.
        index: u32,
        /// How many candidates there were.
        candidates: usize,
    },
    /// A policy answered with a decision that does not fit the stage.
    #[error("bad decision: {0}")]
    BadDecision(String),
    /// The plugin is of another kind than the call needs.
    #[error("is a {actual}, not a {expected}")]
    WrongKind {
        /// The kind the call needs.
        expected: PluginKind,
        /// The plugin's kind.
        actual: PluginKind,
    },
}

/// Checks a plugin name (a file stem or an upload's name).
pub fn validate_name(name: &str) -> Result<(), LoadError> {
    if crate::model::is_plugin_name(name) { Ok(()) } else { Err(LoadError::InvalidName(name.to_string())) }
}
