//! Workloads: concurrent logical clients that drive the cluster through the SDK
//! (`seam-client`) and record every operation.
//!
//! Each worker is one logical client with its own [`seam_client::Client`] (its own
//! connections, leader view and request ids) and its own seeded random stream. An
//! operation is recorded as an `invoke` before the SDK call and an `ok`, `fail` or
//! `info` after it:
//!
//! - `ok`: the SDK returned success (for a cas, that it compared equal and wrote);
//! - `fail`: the SDK returned a *definite* error (it certainly did not take effect), or
//!   a read failed (a read has no effect);
//! - `info`: the SDK returned an *indeterminate* error (`Error::is_indeterminate`), or
//!   the harness's own per-operation deadline ([`OP_TIMEOUT_MS`]) cut the call off.
//!   The worker then takes a fresh process id, as the history format requires.
//!
//! The SDK's classification is itself under test here: a definite error for a write
//! that in fact applied shows up as an anomaly.
//!
//! | workload | module | checker |
//! |---|---|---|
//! | `register` | [`register`] | linearizability per key |
//! | `idempotent` | [`idempotent`] | exactly-once |
//! | `lease` | [`lease`] | lease safety (fencing) |
//! | `relaxed` | [`relaxed`] | TTL, staleness, convergence |

pub mod idempotent;
pub mod lease;
pub mod register;
pub mod relaxed;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::proxy::NodeId;
use crate::recorder::{Completion, Recorder};

/// The harness's deadline for one operation (beyond the SDK's own timeouts and bounded
/// retries): past it the call is dropped and recorded `info` (reads: `fail`).
pub const OP_TIMEOUT_MS: u64 = 10_000;
/// Attempts at each final read (after the faults healed) before giving up on a key.
pub const FINAL_READ_ATTEMPTS_MAX: u32 = 20;
/// Pause between failed final-read attempts.
pub const FINAL_READ_RETRY_MS: u64 = 500;
/// Most workers a run may have.
pub const WORKERS_MAX: usize = 64;

/// One node, as the workloads see it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// Its id.
    pub id: NodeId,
    /// Its region.
    pub region: String,
    /// Its advertised address.
    pub addr: String,
}

/// What every workload gets.
#[derive(Clone)]
pub struct Ctx {
    /// The history.
    pub rec: Arc<Recorder>,
    /// The nodes.
    pub nodes: Vec<NodeInfo>,
    /// The run's seed (each worker derives its own stream).
    pub seed: u64,
    /// Set when the workers must stop issuing operations.
    pub stop: Arc<AtomicBool>,
}

impl Ctx {
    /// Every node's advertised address.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// Whether the workers must stop.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A logical client's current process id; renewed after an `info`.
pub struct Process {
    rec: Arc<Recorder>,
    id: u64,
}

impl Process {
    /// A fresh logical client.
    pub fn new(rec: Arc<Recorder>) -> Process {
        let id = rec.new_process();
        Process { rec, id }
    }

    /// Records an invoke; false when the history refuses more (stop issuing).
    pub fn invoke(&self, f: &str, key: Option<&str>, value: Value) -> bool {
        self.rec.invoke(self.id, f, key, value)
    }

    /// Records the completion of the outstanding operation.
    pub fn complete(&mut self, done: Done, f: &str, key: Option<&str>) {
        self.rec.complete(self.id, done.how, f, key, done.value, done.error, done.node);
        if done.how == Completion::Info {
            self.id = self.rec.new_process();
        }
    }
}

/// How an operation ended, ready to record.
pub struct Done {
    /// ok, fail or info.
    pub how: Completion,
    /// The result value (ok).
    pub value: Value,
    /// The error (fail, info).
    pub error: Option<String>,
    /// The node that answered.
    pub node: Option<u64>,
}

impl Done {
    /// Success with `value`, served by `node` (0: unknown).
    pub fn ok(value: Value, node: u64) -> Done {
        Done { how: Completion::Ok, value, error: None, node: (node != 0).then_some(node) }
    }

    /// A definite failure.
    pub fn fail(error: String) -> Done {
        Done { how: Completion::Fail, value: Value::Null, error: Some(error), node: None }
    }

    /// An indeterminate outcome.
    pub fn info(error: String) -> Done {
        Done { how: Completion::Info, value: Value::Null, error: Some(error), node: None }
    }

    /// A failed write-like operation: `info` when the error is indeterminate.
    pub fn write_error(e: &seam_client::Error) -> Done {
        if e.is_indeterminate() {
            Done::info(error_text(e))
        } else {
            Done::fail(error_text(e))
        }
    }

    /// The harness's own deadline cut a write-like operation off: indeterminate.
    pub fn write_timeout() -> Done {
        Done::info(format!("harness: no answer within OP_TIMEOUT_MS ({OP_TIMEOUT_MS})"))
    }

    /// The harness's own deadline cut a read off: it had no effect.
    pub fn read_timeout() -> Done {
        Done::fail(format!("harness: no answer within OP_TIMEOUT_MS ({OP_TIMEOUT_MS})"))
    }
}

/// `Variant: message` for an SDK error (the variant names the class: `FencingRejected`,
/// `Indeterminate`, ...).
pub fn error_text(e: &seam_client::Error) -> String {
    let debug = format!("{e:?}");
    let variant: String = debug.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
    format!("{variant}: {e}")
}

/// Runs `call` under [`OP_TIMEOUT_MS`]; `None` when the deadline passed.
pub async fn bounded<T>(call: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(Duration::from_millis(OP_TIMEOUT_MS), call).await.ok()
}

/// Parses a value the workloads wrote (decimal text) back into its integer. A value no
/// workload could have written becomes `i64::MIN`, which no write ever carries, so the
/// checkers report it as a read of a value never written.
pub fn parse_value(bytes: &[u8]) -> i64 {
    std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok()).unwrap_or(i64::MIN)
}

/// Sleeps `ms`, waking early when the run stops.
pub async fn nap(ctx: &Ctx, ms: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    while tokio::time::Instant::now() < deadline && !ctx.stopping() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        tokio::time::sleep(left.min(Duration::from_millis(100))).await;
    }
}

/// The SDK configuration of one worker: every node as a seed, the given per-attempt
/// timeout and retry bound, short backoffs (the nemesis, not the client, sets the pace).
pub fn client_config(
    ctx: &Ctx,
    region: &str,
    request_timeout_ms: u64,
    retries_max: u32,
) -> seam_client::ClientConfig {
    seam_client::ClientConfig {
        endpoints: ctx.endpoints(),
        region: region.to_string(),
        connect_timeout_ms: 500,
        request_timeout_ms,
        retries_max,
        backoff_base_ms: 20,
        backoff_max_ms: 250,
        policy_refresh_ms: 1_000,
        ..seam_client::ClientConfig::default()
    }
}
