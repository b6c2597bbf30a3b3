//! Seam's Jepsen-style harness: the runner, the history format, the checkers and the
//! report.
//!
//! A run ([`run`]) starts a cluster of `seam` processes on a real network
//! ([`net`], [`proxy`], [`cluster`]), drives concurrent clients ([`workload`]) and a
//! seeded nemesis ([`nemesis`]) against it, and records every event as a [`history`]
//! ([`recorder`]). [`suite`] runs every workload under every nemesis, plus the negative
//! controls. The rest of the crate turns a history into evidence:
//!
//! 1. [`history`]: the JSON-lines format, a streaming reader and writer that
//!    enforce its invariants, and [`history::pair`], which turns events into
//!    completed [`history::Operation`]s.
//! 2. [`fault`]: the nemesis's fault windows.
//! 3. [`check`]: one checker per workload, each a pure function from
//!    operations to a [`check::CheckResult`] (Valid, Invalid or Unknown, with
//!    the anomalies found).
//! 4. [`report`]: `summary.json` and a self-contained `report.html` with a
//!    latency timeline that shades the fault windows.
//!
//! The invariant that makes a green run mean something: a checker says
//! Valid only when it examined everything and found nothing; when a bound
//! or a missing observation stops it, it says Unknown.

pub mod check;
pub mod cluster;
pub mod fault;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod probe;
pub mod proxy;
pub mod recorder;
pub mod report;
pub mod rng;
pub mod run;
pub mod suite;
pub mod workload;
