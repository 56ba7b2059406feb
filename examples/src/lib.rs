//! Runnable clients of the control plane. `agent` is the guide's agent loop written against the coordinator
//! (in-process); the HTTP versions come with the REST server.

pub mod agent;
