//! Randomized control for the linearizability checker.
//!
//! A simulator plays a *correct* linearizable register: concurrent clients
//! on a few keys, each operation taking effect at one instant between its
//! invoke and its completion, with random failures (no effect), timeouts
//! (`info`: applied or not, possibly after the timeout, even after the
//! history ends) and a cut-off that leaves operations never completed. Its
//! histories must check Valid. The same histories with one read made stale
//! must check Invalid, naming the key: the negative control.
//!
//! Each case prints `seed=N` first (shown when it fails); rerun one with
//! `SEAM_TEST_SEED=N cargo test -p seam-jepsen --test random_register`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use seam_jepsen::check::{check_history, CheckConfig, Validity, Workload};
use seam_jepsen::history::{pair, read_history, HistoryWriter, Op, OpType, Operation, Outcome, Process};

/// Seeds tried per test when `SEAM_TEST_SEED` is not set.
const SEEDS: u64 = 24;
/// Logical clients (each a process slot; a slot takes a fresh process id
/// after an `info`).
const CLIENTS: usize = 6;
const KEYS: usize = 3;
/// Operations invoked per history.
const OPS: usize = 180;

fn seeds(base: u64) -> Vec<u64> {
    match std::env::var("SEAM_TEST_SEED") {
        Ok(seed) => vec![seed.parse().expect("SEAM_TEST_SEED must be an integer")],
        Err(_) => (0..SEEDS).map(|i| base + i).collect(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Event {
    /// A client slot is ready to invoke.
    Ready(usize),
    /// An operation (by position in `Sim::ops`) takes effect.
    Effect(usize),
    /// An operation completes.
    Complete(usize),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Read,
    Write(i64),
    Cas(Option<i64>, i64),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fate {
    /// Takes effect and reports it.
    Ok,
    /// Definitely does not take effect.
    Fail,
    /// Times out; takes effect (possibly later) only if `applies`.
    Info { applies: bool },
}

struct SimOp {
    process: u64,
    key: usize,
    kind: Kind,
    fate: Fate,
    /// Result of the effect: the read's value, or whether a cas applied.
    read: Option<Option<i64>>,
    cas_applied: bool,
}

struct Sim {
    rng: StdRng,
    now_ns: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    ops: Vec<SimOp>,
    history: Vec<Op>,
    state: [Option<i64>; KEYS],
    next_value: [i64; KEYS],
    process_of: [u64; CLIENTS],
    next_process: u64,
    invoked: usize,
    /// After this time, no more events are recorded (operations in flight
    /// never complete).
    cut_ns: u64,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let cut_ns = if rng.gen_bool(0.5) { u64::MAX } else { rng.gen_range(50_000_000..80_000_000) };
        let mut sim = Sim {
            rng,
            now_ns: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            ops: Vec::new(),
            history: Vec::new(),
            state: [None; KEYS],
            next_value: [0; KEYS],
            process_of: std::array::from_fn(|i| i as u64),
            next_process: CLIENTS as u64,
            invoked: 0,
            cut_ns,
        };
        for slot in 0..CLIENTS {
            let at = sim.rng.gen_range(0..1_000_000);
            sim.schedule(at, Event::Ready(slot));
        }
        sim
    }

    fn schedule(&mut self, at_ns: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at_ns, self.seq, event)));
    }

    fn record(&mut self, process: u64, kind: OpType, f: &str, key: usize, value: Value) {
        if self.now_ns > self.cut_ns {
            return;
        }
        self.history.push(Op {
            index: self.history.len() as u64,
            time_ns: self.now_ns,
            process: Process::Client(process),
            kind,
            f: f.to_string(),
            key: Some(format!("r{key}")),
            value,
            error: None,
            node: None,
        });
    }

    fn run(mut self) -> Vec<Op> {
        while let Some(Reverse((at, _, event))) = self.queue.pop() {
            self.now_ns = at;
            match event {
                Event::Ready(slot) => self.invoke(slot),
                Event::Effect(i) => self.effect(i),
                Event::Complete(i) => self.complete(i),
            }
        }
        self.history
    }

    fn invoke(&mut self, slot: usize) {
        if self.invoked == OPS {
            return;
        }
        self.invoked += 1;
        let key = self.rng.gen_range(0..KEYS);
        let kind = match self.rng.gen_range(0..10) {
            0..=3 => Kind::Read,
            4..=7 => {
                self.next_value[key] += 1;
                Kind::Write(self.next_value[key])
            }
            _ => {
                self.next_value[key] += 1;
                // Guess the current value, or a recent one.
                let guess = self.state[key].map(|v| v - self.rng.gen_range(0..2));
                Kind::Cas(guess, self.next_value[key])
            }
        };
        let fate = match self.rng.gen_range(0..100) {
            0..=79 => Fate::Ok,
            80..=87 => Fate::Fail,
            _ => Fate::Info { applies: self.rng.gen_bool(0.5) },
        };
        let process = self.process_of[slot];
        let (f, value) = match kind {
            Kind::Read => ("read", Value::Null),
            Kind::Write(v) => ("write", json!(v)),
            Kind::Cas(from, to) => ("cas", json!([from, to])),
        };
        self.record(process, OpType::Invoke, f, key, value);
        let i = self.ops.len();
        self.ops.push(SimOp { process, key, kind, fate, read: None, cas_applied: false });
        let effect_at = self.now_ns + self.rng.gen_range(0..3_000_000);
        let complete_at = effect_at + self.rng.gen_range(0..3_000_000);
        match fate {
            Fate::Ok => self.schedule(effect_at, Event::Effect(i)),
            Fate::Fail => {}
            Fate::Info { applies } => {
                if applies {
                    // Possibly long after the client gave up.
                    let late = self.rng.gen_range(0..20_000_000);
                    self.schedule(effect_at + late, Event::Effect(i));
                }
            }
        }
        self.schedule(complete_at, Event::Complete(i));
        let _ = slot;
    }

    fn effect(&mut self, i: usize) {
        let op = &mut self.ops[i];
        let current = &mut self.state[op.key];
        match op.kind {
            Kind::Read => op.read = Some(*current),
            Kind::Write(v) => *current = Some(v),
            Kind::Cas(from, to) => {
                if *current == from {
                    *current = Some(to);
                    op.cas_applied = true;
                }
            }
        }
    }

    fn complete(&mut self, i: usize) {
        let SimOp { process, key, kind, fate, read, cas_applied } = self.ops[i];
        let f = match kind {
            Kind::Read => "read",
            Kind::Write(_) => "write",
            Kind::Cas(..) => "cas",
        };
        let slot =
            self.process_of.iter().position(|p| *p == process).expect("a completing process is in a slot");
        match fate {
            Fate::Ok => match kind {
                Kind::Read => {
                    let seen = read.expect("effect precedes completion");
                    self.record(process, OpType::Ok, f, key, json!(seen));
                }
                Kind::Cas(..) if !cas_applied => {
                    self.record(process, OpType::Fail, f, key, Value::Null);
                }
                _ => self.record(process, OpType::Ok, f, key, Value::Null),
            },
            Fate::Fail => self.record(process, OpType::Fail, f, key, Value::Null),
            Fate::Info { .. } => {
                self.record(process, OpType::Info, f, key, Value::Null);
                self.process_of[slot] = self.next_process;
                self.next_process += 1;
            }
        }
        let think = self.rng.gen_range(0..1_000_000);
        self.schedule(self.now_ns + think, Event::Ready(slot));
    }
}

/// Writes and reads the history back, as a runner and the CLI would.
fn through_text(ops: &[Op]) -> Vec<Op> {
    let mut writer = HistoryWriter::new(Vec::new());
    for op in ops {
        writer.write(op).expect("the simulator writes valid histories");
    }
    read_history(writer.into_inner().as_slice()).expect("reads back")
}

fn config() -> CheckConfig {
    CheckConfig::default()
}

#[test]
fn correct_register_histories_are_valid() {
    for seed in seeds(1_000) {
        eprintln!("seed={seed}");
        let ops = through_text(&Sim::new(seed).run());
        let operations = pair(&ops).expect("pairs");
        let infos = operations.iter().filter(|op| op.outcome == Outcome::Info).count();
        assert!(infos > 0, "seed={seed}: the generator should produce info ops");
        let result = check_history(Workload::Register, &ops, &config()).expect("checks");
        assert_eq!(result.valid, Validity::Valid, "seed={seed}: {:#?}", result.anomalies.first());
        assert_eq!(result.counts.keys, KEYS as u64);
    }
}

/// Makes one ok read stale: it returns the value of an ok write `w1` that an
/// ok write `w2` had certainly overwritten before the read began (`w1`
/// completed before `w2` was invoked, `w2` completed before the read was
/// invoked). Values are unique per key, so no linearization explains it.
/// Returns the key, or `None` when the history has no such triple.
fn inject_stale_read(ops: &mut [Op]) -> Option<String> {
    let operations = pair(ops).expect("pairs");
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in &operations {
        by_key.entry(op.key.as_deref()?).or_default().push(op);
    }
    let written = |op: &Operation| -> Option<i64> {
        match op.f.as_str() {
            "write" => op.invoke_value.as_i64(),
            "cas" => op.invoke_value.get(1).and_then(Value::as_i64),
            _ => None,
        }
    };
    for (key, key_ops) in by_key {
        let writes: Vec<&&Operation> =
            key_ops.iter().filter(|op| op.outcome == Outcome::Ok && written(op).is_some()).collect();
        for read in key_ops.iter().filter(|op| op.outcome == Outcome::Ok && op.f == "read") {
            let stale = writes.iter().find_map(|w1| {
                let overwritten = writes.iter().any(|w2| w1.precedes(w2) && w2.precedes(read));
                overwritten.then(|| written(w1)).flatten()
            });
            if let Some(value) = stale.filter(|v| read.value.as_i64() != Some(*v)) {
                let at = read.complete_index.expect("ok read completed") as usize;
                ops[at].value = json!(value);
                return Some(key.to_string());
            }
        }
    }
    None
}

#[test]
fn injected_stale_read_is_invalid() {
    let mut injected = 0;
    for seed in seeds(2_000) {
        eprintln!("seed={seed}");
        let mut ops = Sim::new(seed).run();
        let Some(key) = inject_stale_read(&mut ops) else {
            continue;
        };
        injected += 1;
        let ops = through_text(&ops);
        let result = check_history(Workload::Register, &ops, &config()).expect("checks");
        assert_eq!(result.valid, Validity::Invalid, "seed={seed}");
        let anomaly = result.first_anomaly().expect("an anomaly");
        assert_eq!(anomaly.key.as_deref(), Some(key.as_str()), "seed={seed}");
        assert_eq!(result.counts.keys_invalid, 1, "seed={seed}");
    }
    assert!(injected > 0, "no seed produced a history to inject into");
}
