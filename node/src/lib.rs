//! The Seam node: a Raft replica serving the sacred tier, leases and (per field policy)
//! the relaxed tier over gRPC, plus the `seam` command-line tool's building blocks.
//!
//! Reading order, bottom-up: [`config`] (what a node is told), [`peer`] and [`network`]
//! (how nodes reach each other), [`replica`] (propose and read barriers over openraft and
//! the state machine of `seam-raft-storage`), [`service`] (the gRPC API), [`server`]
//! (start and stop), [`http`] and [`metrics`] (observability).

pub mod batch;
pub mod bench;
pub mod cli;
pub mod config;
pub mod convert;
pub mod cpu_latency;
pub mod demo;
pub mod error;
pub mod http;
pub mod idle_spin;
pub mod metrics;
pub mod network;
pub mod peer;
pub mod relaxed;
pub mod replica;
pub mod server;
pub mod service;
