//! `relaxed`: TTL writes, reads and deletes on a relaxed field; checked for TTL expiry,
//! staleness within budget (outside fault windows) and convergence.
//!
//! Before the workers start, the harness sets the policy of [`PREFIX`] to relaxed with
//! the run's staleness budget (`seam policy set PREFIX --tier relaxed`, through the SDK).
//! Each worker is pinned to one node by region (the SDK sends relaxed operations to a
//! node of the client's region; every node has its own region here) and puts values
//! with short TTLs ([`TTL_MS_MIN`]..[`TTL_MS_MAX`]) to [`KEYS`] keys, reads them, and
//! sometimes deletes them. Writes are rare enough per key that many values expire
//! before they are overwritten, so a node serving an expired entry is seen.
//!
//! After the faults healed and the budget passed, every key is read once on every node
//! (`final-read`, with a fresh client pinned to that node): the values must agree.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::{bounded, client_config, error_text, nap, parse_value, Ctx, Done, NodeInfo, Process};
use crate::rng::Rng;

/// Keys used.
pub const KEYS: u64 = 16;
/// Key prefix (the relaxed field).
pub const PREFIX: &str = "jepsen/relaxed/";
/// Shortest TTL put.
pub const TTL_MS_MIN: u64 = 700;
/// Longest TTL put.
pub const TTL_MS_MAX: u64 = 2_500;
/// Per-attempt SDK timeout.
pub const REQUEST_TIMEOUT_MS: u64 = 1_000;
/// SDK retries per operation.
pub const RETRIES_MAX: u32 = 1;
/// Attempts to connect a pinned client before giving up on its node.
pub const CONNECT_ATTEMPTS_MAX: u32 = 25;
/// How long setting the policy may take before the run gives up.
pub const POLICY_SET_MS_MAX: u64 = 30_000;

/// Makes [`PREFIX`] a relaxed field with `budget_ms` of staleness budget.
pub async fn setup(ctx: &Ctx, budget_ms: u64) -> Result<(), String> {
    let client = seam_client::Client::new(client_config(ctx, "", 2_000, 3)).map_err(|e| e.to_string())?;
    let policy = seam_client::Policy::relaxed(PREFIX, budget_ms);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(POLICY_SET_MS_MAX);
    loop {
        let last = match client.policies().set(policy.clone()).await {
            Ok(outcome) if outcome.lagging_nodes.is_empty() => return Ok(()),
            Ok(outcome) => format!("set, but nodes {:?} do not serve it yet", outcome.lagging_nodes),
            Err(e) => error_text(&e),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "setting the relaxed policy on {PREFIX} within {POLICY_SET_MS_MAX} ms: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Starts `workers` relaxed workers, spread over the nodes.
pub fn spawn(ctx: &Ctx, workers: usize, set: &mut JoinSet<()>) {
    let values = Arc::new(AtomicI64::new(1));
    for w in 0..workers {
        let ctx = ctx.clone();
        let values = values.clone();
        let node = ctx.nodes[w % ctx.nodes.len()].clone();
        set.spawn(async move { worker(ctx, w as u64, node, values).await });
    }
}

/// A client that talks to `node` only for relaxed operations: its region is the node's,
/// and it has loaded the members and the policy table before its first operation
/// (otherwise it would route the first ones as sacred, to the leader).
async fn pinned_client(
    ctx: &Ctx,
    node: &NodeInfo,
    request_timeout_ms: u64,
    retries_max: u32,
) -> Option<seam_client::Client> {
    let mut config = client_config(ctx, &node.region, request_timeout_ms, retries_max);
    config.endpoints = vec![node.addr.clone()];
    let mut last = String::new();
    for _ in 0..CONNECT_ATTEMPTS_MAX {
        match seam_client::Client::connect(config.clone()).await {
            Ok(client) => return Some(client),
            Err(e) => last = error_text(&e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("seam-jepsen: relaxed client for node {}: {last}", node.id);
    None
}

async fn worker(ctx: Ctx, w: u64, node: NodeInfo, values: Arc<AtomicI64>) {
    let mut rng = Rng::stream(ctx.seed, 4_000 + w);
    let Some(client) = pinned_client(&ctx, &node, REQUEST_TIMEOUT_MS, RETRIES_MAX).await else { return };
    let mut process = Process::new(ctx.rec.clone());
    while !ctx.stopping() {
        let key = format!("{PREFIX}{}", rng.below(KEYS));
        let roll = rng.below(100);
        let target = json!({"node": node.id});
        let (f, done) = if roll < 25 {
            let value = values.fetch_add(1, Ordering::Relaxed);
            let ttl_ms = rng.between(TTL_MS_MIN, TTL_MS_MAX);
            if !process.invoke("put", Some(&key), json!({"value": value, "ttl_ms": ttl_ms, "node": node.id}))
            {
                return;
            }
            let options =
                seam_client::PutOptions { ttl: Some(Duration::from_millis(ttl_ms)), ..Default::default() };
            let done = match bounded(client.put_with(&key, value.to_string(), options)).await {
                None => Done::write_timeout(),
                Some(Err(e)) => Done::write_error(&e),
                Some(Ok(written)) => match written.info() {
                    Some(info) => Done::ok(Value::Null, info.meta.node_id),
                    None => Done::info("queued offline (not applied yet)".into()),
                },
            };
            ("put", done)
        } else if roll < 30 {
            if !process.invoke("delete", Some(&key), target) {
                return;
            }
            let done = match bounded(client.delete(&key)).await {
                None => Done::write_timeout(),
                Some(Err(e)) => Done::write_error(&e),
                Some(Ok(written)) => match written.info() {
                    Some(info) => Done::ok(Value::Null, info.meta.node_id),
                    None => Done::info("queued offline (not applied yet)".into()),
                },
            };
            ("delete", done)
        } else {
            if !process.invoke("get", Some(&key), target) {
                return;
            }
            let done = match bounded(client.get(&key)).await {
                None => Done::read_timeout(),
                Some(Err(e)) => Done::fail(error_text(&e)),
                Some(Ok(got)) => {
                    let value = got.value().map(parse_value);
                    let origin = (got.origin_node != 0).then_some(got.origin_node);
                    Done::ok(
                        json!({"value": value, "age_ms": got.age_ms, "origin": origin}),
                        got.meta.node_id,
                    )
                }
            };
            ("get", done)
        };
        process.complete(done, f, Some(&key));
        nap(&ctx, rng.below(20)).await;
    }
}

/// Reads every key on every node, after the faults healed and the budget passed.
pub async fn final_reads(ctx: &Ctx) {
    let mut process = Process::new(ctx.rec.clone());
    for node in &ctx.nodes {
        let Some(client) = pinned_client(ctx, node, 2_000, 2).await else { continue };
        for k in 0..KEYS {
            let key = format!("{PREFIX}{k}");
            for _ in 0..super::FINAL_READ_ATTEMPTS_MAX {
                if !process.invoke("final-read", Some(&key), json!({"node": node.id})) {
                    return;
                }
                let done = match bounded(client.get(&key)).await {
                    None => Done::read_timeout(),
                    Some(Err(e)) => Done::fail(error_text(&e)),
                    Some(Ok(got)) if got.meta.node_id != node.id && !got.from_session => Done::fail(format!(
                        "answered by node {} instead of node {}",
                        got.meta.node_id, node.id
                    )),
                    Some(Ok(got)) => {
                        let value = got.value().map(parse_value);
                        Done::ok(json!({"node": node.id, "value": value}), node.id)
                    }
                };
                let ok = done.how == crate::recorder::Completion::Ok;
                process.complete(done, "final-read", Some(&key));
                if ok {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(super::FINAL_READ_RETRY_MS)).await;
            }
        }
    }
}
