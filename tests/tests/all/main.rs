//! The end-to-end test binary: one module per area, shared support in the `aragora_cp_tests` library.
//! Run with `cargo test --workspace` (see tests/README.md).

mod api;
mod api_fuzz;
mod api_operations;
mod api_schema;
mod aragora_clients;
mod audit;
mod builtin_strategies;
mod client_surface;
mod dashboard;
mod deliberations;
mod engine;
mod example_plugins;
mod example_strategy;
mod fleet_claims;
mod fleet_health;
mod fleet_plugins;
mod hot_reload;
mod isolation;
mod languages;
mod notifications;
mod openapi;
mod plugin_uploads;
mod rollouts;
mod rule_policies;
mod schedules;
mod slow_store;
mod store_conformance;
mod store_model;
mod store_redis;
mod waiting_claims;
