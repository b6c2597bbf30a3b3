//! `lease`: holders contend for single-writer leases and write with their fencing
//! tokens; checked for lease safety.
//!
//! Each worker is one holder (`w3`). It picks one of [`KEYS`] keys, tries to acquire
//! its lease (TTL [`TTL_MS`]), and while it holds it writes the key with the lease's
//! token (the lease key is the data key). Now and then a holder *stalls* for longer
//! than the TTL before its next write ([`STALL_PERCENT`]): the client-side stand-in for
//! a GC pause or a SIGSTOPped process. By then another holder may own the key with a
//! higher token, and the store must refuse the stale token (`FencingRejected`) or the
//! expired lease (`LeaseExpired`). Workers also read the key (value, revision and the
//! token it was written with) and sometimes release the lease early.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::{bounded, client_config, error_text, nap, parse_value, Ctx, Done, Process};
use crate::recorder::Completion;
use crate::rng::Rng;

/// Keys contended for.
pub const KEYS: u64 = 3;
/// Key prefix.
pub const PREFIX: &str = "jepsen/lease/";
/// Lease TTL.
pub const TTL_MS: u64 = 1_000;
/// Chance that a holder stalls past its TTL before a write.
pub const STALL_PERCENT: u64 = 15;
/// Writes per hold at most.
pub const WRITES_PER_HOLD_MAX: u64 = 4;
/// Per-attempt SDK timeout.
pub const REQUEST_TIMEOUT_MS: u64 = 1_000;
/// SDK retries per operation.
pub const RETRIES_MAX: u32 = 2;

/// Starts `workers` lease holders.
pub fn spawn(ctx: &Ctx, workers: usize, set: &mut JoinSet<()>) {
    let values = Arc::new(AtomicI64::new(1));
    for w in 0..workers {
        let ctx = ctx.clone();
        let values = values.clone();
        set.spawn(async move { worker(ctx, w as u64, values).await });
    }
}

async fn worker(ctx: Ctx, w: u64, values: Arc<AtomicI64>) {
    let mut rng = Rng::stream(ctx.seed, 3_000 + w);
    let holder = format!("w{w}");
    let region =
        ctx.nodes.get(w as usize % ctx.nodes.len().max(1)).map_or("r1".to_string(), |n| n.region.clone());
    let client = match seam_client::Client::new(client_config(&ctx, &region, REQUEST_TIMEOUT_MS, RETRIES_MAX))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("seam-jepsen: lease worker {w}: {e}");
            return;
        }
    };
    let leases = client.leases();
    let mut process = Process::new(ctx.rec.clone());
    while !ctx.stopping() {
        let key = format!("{PREFIX}{}", rng.below(KEYS));
        if rng.percent(25) {
            if !read(&client, &mut process, &key).await {
                return;
            }
            continue;
        }
        let invoke = json!({"holder": holder, "region": region, "ttl_ms": TTL_MS});
        if !process.invoke("acquire", Some(&key), invoke) {
            return;
        }
        let acquired = bounded(leases.acquire(&key, &holder, &region, Duration::from_millis(TTL_MS))).await;
        let token = match acquired {
            None => {
                process.complete(Done::write_timeout(), "acquire", Some(&key));
                continue;
            }
            Some(Err(e)) => {
                process.complete(Done::write_error(&e), "acquire", Some(&key));
                nap(&ctx, rng.between(20, 100)).await;
                continue;
            }
            Some(Ok(lease)) => {
                let value =
                    json!({"holder": holder, "region": region, "ttl_ms": TTL_MS, "token": lease.token});
                process.complete(Done::ok(value, 0), "acquire", Some(&key));
                lease.token
            }
        };
        for _ in 0..rng.between(1, WRITES_PER_HOLD_MAX) {
            if ctx.stopping() {
                break;
            }
            if rng.percent(STALL_PERCENT) {
                // Deliberately outlive the lease (not `nap`: the stall is the point).
                tokio::time::sleep(Duration::from_millis(TTL_MS + rng.between(200, 800))).await;
            }
            let value = values.fetch_add(1, Ordering::Relaxed);
            let invoke = json!({"holder": holder, "token": token, "value": value});
            if !process.invoke("write", Some(&key), invoke.clone()) {
                return;
            }
            let options = seam_client::PutOptions { token: Some(token), ..Default::default() };
            let done = match bounded(client.put_with(&key, value.to_string(), options)).await {
                None => Done::write_timeout(),
                Some(Err(e)) => Done::write_error(&e),
                Some(Ok(written)) => match written.info() {
                    Some(info) => Done::ok(
                        json!({"holder": holder, "token": token, "value": value, "revision": info.revision}),
                        info.meta.node_id,
                    ),
                    None => Done::info("queued offline (not applied yet)".into()),
                },
            };
            let held = done.how == Completion::Ok;
            process.complete(done, "write", Some(&key));
            if !held {
                break;
            }
            nap(&ctx, rng.below(50)).await;
        }
        if rng.percent(50) && !ctx.stopping() {
            if !process.invoke("release", Some(&key), json!({"holder": holder, "token": token})) {
                return;
            }
            let done = match bounded(leases.release(&key, token)).await {
                None => Done::write_timeout(),
                Some(Err(e)) => Done::write_error(&e),
                Some(Ok(())) => Done::ok(Value::Null, 0),
            };
            process.complete(done, "release", Some(&key));
        }
        nap(&ctx, rng.below(30)).await;
    }
}

/// One read of `key`; false when the history refuses more.
async fn read(client: &seam_client::Client, process: &mut Process, key: &str) -> bool {
    if !process.invoke("read", Some(key), Value::Null) {
        return false;
    }
    let done = match bounded(client.get(key)).await {
        None => Done::read_timeout(),
        Some(Err(e)) => Done::fail(error_text(&e)),
        Some(Ok(got)) => {
            let value = match &got.kv {
                Some(kv) => json!({
                    "value": parse_value(&kv.value),
                    "revision": kv.mod_revision,
                    "token": (kv.token != 0).then_some(kv.token),
                }),
                None => json!({"value": null, "revision": null, "token": null}),
            };
            Done::ok(value, got.meta.node_id)
        }
    };
    process.complete(done, "read", Some(key));
    true
}
