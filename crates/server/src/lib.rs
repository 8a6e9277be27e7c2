//! The kaon node: the leader's effect runtime and the (for now single-node)
//! event log it drives.
//!
//! The runtime is the thin I/O shell around the pure core: it feeds inputs
//! (client commands, committed events, Mesos events, timers) to
//! `kaon_core::decide::decide`, appends the returned events to the log,
//! and performs the returned effects against Mesos through
//! `kaon_mesos::driver`. The log is behind [`log::EventLog`], so the
//! Raft-replicated log replaces [`log::LocalLog`] without touching the
//! runtime.

pub mod admin;
pub mod auth;
pub mod grpc;
pub mod log;
pub mod mesos_tls;
pub mod metrics;
pub mod runtime;
pub mod signing;
pub mod ui;
