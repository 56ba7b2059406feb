//! Aragora control plane: service discovery, priority scheduling, health monitoring and load balancing for fleets
//! of AI agents, with agent-selection strategies, policies and health probes as sandboxed WebAssembly plugins.
//!
//! The map of the crate (docs/ARCHITECTURE.md tells the same with more words):
//! - [`model`]: wire types and input validation.
//! - [`store`]: all state, changed only by atomic transitions (`Store` trait; the in-memory and Redis backends).
//! - [`plugins`]: the WebAssembly plugin platform (bindings, runtime and sandbox, loader, registry, watcher, the
//!   embedded built-in strategies).
//! - [`scheduler`]: submits through policies, routing of new work to waiting agents by strategy plugins,
//!   blocking claims, sweeps.
//! - [`registry`]: agent registration, heartbeats, pause/resume.
//! - [`health`]: probe rounds over health-probe plugins and the HTTP check.
//! - [`notifications`]: events sent to webhook, Slack and Teams channels, at least once, by every server's worker.
//! - [`coordinator`]: the façade the API and CLI use (the guide's API) and the one event stream.
//! - [`api`]: the REST API (axum): a router file per resource, bearer-token auth, problem+json errors, SSE.
//! - [`config`]: the validated configuration. [`cli`]: the `aragora-cp` command line.
//!
//! A task's flow: a client submits through the coordinator → the scheduler validates it and runs the submit
//! policies → the store commits it, indexed by capability signature → if agents are blocked in a claim, the
//! task's strategy plugin picks one and the store assigns it through that claim's waiter token; otherwise the
//! next claim pulls it in priority order → the agent completes or fails it, fenced by its lease → the sweeper
//! recovers timed-out attempts and silent agents' work. Every transition emits an event.

/// The hash maps on every request's way (the store's indexes, a server's waiting claims, the token cache, the request
/// counters): foldhash, seeded per map, hashes a task id or a token several times faster than the standard library's
/// SipHash.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub mod api;
pub mod cli;
pub mod config;
pub mod coordinator;
pub mod health;
pub mod model;
pub mod notifications;
pub mod plugins;
pub mod registry;
pub mod scheduler;
pub mod store;
