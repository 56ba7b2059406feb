//! Runnable clients of the control plane.
