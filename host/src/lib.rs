//! Aragora control plane: service discovery, priority scheduling, health monitoring and load balancing for fleets
//! of AI agents, with agent-selection strategies, policies and health probes as sandboxed WebAssembly plugins.
//!
//! The map of the crate:
//! - [`plugins`]: the WebAssembly plugin platform (WIT bindings, wasmtime runtime and sandbox, loader, registry,
//!   hot-reload watcher, the embedded built-in strategies).
//! - [`cli`]: the `aragora-cp` command line (plugin tools, benchmarks).
//!
//! How a task will flow (the engine lands with the next modules): a client submits through the API to the
//! coordinator, policies (plugins) check it, the store indexes it; a waiting agent is chosen by the task's
//! strategy (a plugin) or pulls it with a claim; health probes (plugins) and breakers decide who may take work.

pub mod cli;
pub mod config;
pub mod coordinator;
pub mod health;
pub mod model;
pub mod plugins;
pub mod registry;
pub mod scheduler;
pub mod store;
