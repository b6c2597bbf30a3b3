//! `register`: reads, writes and compare-and-sets on sacred keys, checked for
//! linearizability per key.
//!
//! Keys rotate, as in Jepsen's etcd suite: [`KEYS_ACTIVE`] keys are in use at a time,
//! and a key is retired after [`OPS_PER_KEY`] operations, so each key's history stays
//! small enough for the exponential search (a few hundred operations). A key is also
//! retired once [`INFOS_PER_KEY_MAX`] of its writes ended indeterminate: each may take
//! effect at any later point, and the search is exponential in how many are open at
//! once (a kill or a partition makes every in-flight write indeterminate). Values are
//! unique integers (a global counter), written as decimal text. A cas compares with the
//! last value the worker saw on the key, so it succeeds often enough to matter.
//!
//! Every [`READER_EVERY`]-th worker only reads. A client that writes leaves a leader
//! as soon as a write to it times out; a reader keeps asking the node it believes
//! leads for as long as that node answers, so when an isolated old leader answers
//! reads it should not answer (no quorum), readers are there to see it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::{bounded, client_config, nap, parse_value, Ctx, Done, Process};
use crate::rng::Rng;

/// Keys in use at once.
pub const KEYS_ACTIVE: usize = 3;
/// Operations on one key before it is retired for a fresh one.
pub const OPS_PER_KEY: u64 = 200;
/// Indeterminate writes on one key before it is retired for a fresh one.
pub const INFOS_PER_KEY_MAX: u64 = 4;
/// Last-seen values a worker remembers (for cas); past it the memory is cleared.
pub const SEEN_MAX: usize = 64;
/// Key prefix.
pub const PREFIX: &str = "jepsen/register/";
/// Every this-many-th worker only reads (see the module docs).
pub const READER_EVERY: u64 = 3;
/// Per-attempt SDK timeout.
pub const REQUEST_TIMEOUT_MS: u64 = 1_000;
/// SDK retries per operation.
pub const RETRIES_MAX: u32 = 2;

/// One slot of the rotor: the key it is on, its operations and indeterminate writes.
struct Slot {
    key: u64,
    ops: u64,
    infos: u64,
}

/// Which key each slot is on.
struct Rotor {
    slots: Vec<Slot>,
    next_key: u64,
}

impl Rotor {
    fn new() -> Rotor {
        let slots = (0..KEYS_ACTIVE as u64).map(|key| Slot { key, ops: 0, infos: 0 }).collect();
        Rotor { slots, next_key: KEYS_ACTIVE as u64 }
    }

    fn take(&mut self, rng: &mut Rng) -> u64 {
        let slot = &mut self.slots[rng.below(KEYS_ACTIVE as u64) as usize];
        if slot.ops >= OPS_PER_KEY || slot.infos >= INFOS_PER_KEY_MAX {
            *slot = Slot { key: self.next_key, ops: 0, infos: 0 };
            self.next_key += 1;
        }
        slot.ops += 1;
        slot.key
    }

    /// A write or cas on `key` ended indeterminate.
    fn note_info(&mut self, key: u64) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.key == key) {
            slot.infos += 1;
        }
    }
}

/// Starts `workers` register workers.
pub fn spawn(ctx: &Ctx, workers: usize, set: &mut JoinSet<()>) {
    let rotor = Arc::new(Mutex::new(Rotor::new()));
    let values = Arc::new(AtomicI64::new(1));
    for w in 0..workers {
        let ctx = ctx.clone();
        let rotor = rotor.clone();
        let values = values.clone();
        set.spawn(async move { worker(ctx, w as u64, rotor, values).await });
    }
}

async fn worker(ctx: Ctx, w: u64, rotor: Arc<Mutex<Rotor>>, values: Arc<AtomicI64>) {
    let mut rng = Rng::stream(ctx.seed, 1_000 + w);
    let client = match seam_client::Client::new(client_config(&ctx, "", REQUEST_TIMEOUT_MS, RETRIES_MAX)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("seam-jepsen: register worker {w}: {e}");
            return;
        }
    };
    let mut process = Process::new(ctx.rec.clone());
    let mut seen: HashMap<u64, i64> = HashMap::new();
    while !ctx.stopping() {
        let key_id = rotor.lock().unwrap_or_else(|p| p.into_inner()).take(&mut rng);
        let key = format!("{PREFIX}{key_id}");
        let roll = if w % READER_EVERY == READER_EVERY - 1 { 0 } else { rng.below(100) };
        let (f, done) = if roll < 50 {
            if !process.invoke("read", Some(&key), Value::Null) {
                return;
            }
            let done = match bounded(client.get(&key)).await {
                None => Done::read_timeout(),
                Some(Err(e)) => Done::fail(super::error_text(&e)),
                Some(Ok(got)) => {
                    let value = got.value().map(parse_value);
                    if let Some(v) = value {
                        remember(&mut seen, key_id, v);
                    }
                    Done::ok(json!(value), got.meta.node_id)
                }
            };
            ("read", done)
        } else if roll < 80 || !seen.contains_key(&key_id) {
            let value = values.fetch_add(1, Ordering::Relaxed);
            if !process.invoke("write", Some(&key), json!(value)) {
                return;
            }
            let done = match bounded(client.put(&key, value.to_string())).await {
                None => Done::write_timeout(),
                Some(Err(e)) => Done::write_error(&e),
                Some(Ok(written)) => match written.info() {
                    Some(info) => {
                        remember(&mut seen, key_id, value);
                        Done::ok(Value::Null, info.meta.node_id)
                    }
                    None => Done::info("queued offline (not applied yet)".into()),
                },
            };
            ("write", done)
        } else {
            let from = seen.get(&key_id).copied().unwrap_or(0);
            let to = values.fetch_add(1, Ordering::Relaxed);
            if !process.invoke("cas", Some(&key), json!([from, to])) {
                return;
            }
            let expected = from.to_string();
            let cas = client.cas(&key, Some(expected.as_bytes()), to.to_string());
            let done = match bounded(cas).await {
                None => Done::write_timeout(),
                Some(Err(e)) => Done::write_error(&e),
                Some(Ok(cas)) if cas.succeeded => {
                    remember(&mut seen, key_id, to);
                    Done::ok(Value::Null, 0)
                }
                Some(Ok(cas)) => {
                    if let Some(kv) = cas.current {
                        remember(&mut seen, key_id, parse_value(&kv.value));
                    }
                    Done::fail("compare failed".into())
                }
            };
            ("cas", done)
        };
        if done.how == crate::recorder::Completion::Info {
            rotor.lock().unwrap_or_else(|p| p.into_inner()).note_info(key_id);
        }
        process.complete(done, f, Some(&key));
        nap(&ctx, rng.below(10)).await;
    }
}

fn remember(seen: &mut HashMap<u64, i64>, key: u64, value: i64) {
    if seen.len() >= SEEN_MAX && !seen.contains_key(&key) {
        seen.clear();
    }
    seen.insert(key, value);
}
