//! `idempotent`: writes retried through lost replies, checked for exactly-once
//! application.
//!
//! The SDK retries a write only with its original request id, so the state machine's
//! dedup table must answer a retry with the first result instead of applying it again.
//! To make retries happen, the workers use a short per-attempt timeout
//! ([`REQUEST_TIMEOUT_MS`]) and many retries: whenever a commit takes longer (added
//! latency, a paused leader, an election), the SDK gives up waiting on an attempt whose
//! write may already be in the log, and sends it again. Each logical write carries the
//! harness's own `request_id` (unique, never reissued: the SDK does not let a caller
//! reuse its internal id, so an `info` write stays one indeterminate logical write).
//!
//! After the run (faults healed), one final read per key records its `version` (writes
//! applied since creation): the checker demands `ok <= version <= ok + info`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use serde_json::json;
use tokio::task::JoinSet;

use super::{
    bounded, client_config, error_text, nap, parse_value, Ctx, Done, Process, FINAL_READ_ATTEMPTS_MAX,
    FINAL_READ_RETRY_MS,
};
use crate::rng::Rng;

/// Keys written.
pub const KEYS: u64 = 8;
/// Key prefix.
pub const PREFIX: &str = "jepsen/idempotent/";
/// Per-attempt SDK timeout: short, so that slow commits are retried.
pub const REQUEST_TIMEOUT_MS: u64 = 250;
/// SDK retries per write (all with the same request id).
pub const RETRIES_MAX: u32 = 8;

/// Starts `workers` idempotent workers.
pub fn spawn(ctx: &Ctx, workers: usize, set: &mut JoinSet<()>) {
    let ids = Arc::new(AtomicI64::new(1));
    for w in 0..workers {
        let ctx = ctx.clone();
        let ids = ids.clone();
        set.spawn(async move { worker(ctx, w as u64, ids).await });
    }
}

async fn worker(ctx: Ctx, w: u64, ids: Arc<AtomicI64>) {
    let mut rng = Rng::stream(ctx.seed, 2_000 + w);
    let client = match seam_client::Client::new(client_config(&ctx, "", REQUEST_TIMEOUT_MS, RETRIES_MAX)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("seam-jepsen: idempotent worker {w}: {e}");
            return;
        }
    };
    let mut process = Process::new(ctx.rec.clone());
    while !ctx.stopping() {
        let key = format!("{PREFIX}{}", rng.below(KEYS));
        let id = ids.fetch_add(1, Ordering::Relaxed);
        if !process.invoke("write", Some(&key), json!({"request_id": id, "value": id})) {
            return;
        }
        let done = match bounded(client.put(&key, id.to_string())).await {
            None => Done::write_timeout(),
            Some(Err(e)) => Done::write_error(&e),
            Some(Ok(written)) => match written.info() {
                Some(info) => Done::ok(
                    json!({"request_id": id, "value": id, "revision": info.revision}),
                    info.meta.node_id,
                ),
                None => Done::info("queued offline (not applied yet)".into()),
            },
        };
        process.complete(done, "write", Some(&key));
        nap(&ctx, rng.below(20)).await;
    }
}

/// Reads every key once (retrying failed reads), after the faults healed.
pub async fn final_reads(ctx: &Ctx) {
    let config = client_config(ctx, "", 2_000, 3);
    let client = match seam_client::Client::new(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("seam-jepsen: idempotent final reads: {e}");
            return;
        }
    };
    let mut process = Process::new(ctx.rec.clone());
    for k in 0..KEYS {
        let key = format!("{PREFIX}{k}");
        for _ in 0..FINAL_READ_ATTEMPTS_MAX {
            if !process.invoke("read", Some(&key), serde_json::Value::Null) {
                return;
            }
            let done = match bounded(client.get(&key)).await {
                None => Done::read_timeout(),
                Some(Err(e)) => Done::fail(error_text(&e)),
                Some(Ok(got)) => {
                    let value = got.kv.as_ref().map(|kv| parse_value(&kv.value));
                    let version = got.kv.as_ref().map_or(0, |kv| kv.version);
                    Done::ok(json!({"value": value, "version": version}), got.meta.node_id)
                }
            };
            let ok = done.how == crate::recorder::Completion::Ok;
            process.complete(done, "read", Some(&key));
            if ok {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(FINAL_READ_RETRY_MS)).await;
        }
    }
}
