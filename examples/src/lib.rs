//! Runnable clients of the control plane. `agent` is the guide's agent loop written against the coordinator
//! (in-process); `submitter` submits tasks over REST and waits for their results. The curl walk-through and the
//! Python agent live beside this crate (`examples/curl`, `examples/python`); its tests run them all against a
//! real server.

pub mod agent;
pub mod submitter;
