//! The nemesis: faults on a seeded schedule.
//!
//! [`schedule`] turns (seed, enabled nemeses, duration, nodes) into a list of fault
//! windows, one fault at a time, separated by quiet periods; the same inputs always give
//! the same schedule, which the runner prints and writes to `schedule.json`. Kinds are
//! taken round-robin from a seeded shuffle of the enabled ones, so a short run still
//! exercises every enabled nemesis. Targets are drawn from the seed too, except "the
//! leader", which is resolved when the fault starts (and recorded).
//!
//! | nemesis | fault | history events |
//! |---|---|---|
//! | `kill` | SIGKILL a node, restart it at the end of the window | `kill` / `restart` |
//! | `pause` | SIGSTOP a node, SIGCONT it at the end | `pause` / `resume` |
//! | `partition` | isolate a node, isolate the leader, split majority/minority, or bridge | `start-partition` / `stop-partition` |
//! | `latency` | add one-way latency (+ jitter) between nodes of different regions | `start-latency` / `stop-latency` |
//! | `skew` | move one node's wall clock by up to ±[`SKEW_MS_MAX`] | `start-skew` / `stop-skew` |
//! | `member` | remove a node from the membership, then add it back (learner, promote) | `start-member` / `stop-member` |
//! | `partition-leader` | like `partition`, always isolating the current leader (not in `all`) | `start-partition` / `stop-partition` |
//!
//! A window's opening event is recorded before the fault is injected and its closing
//! event after the fault is healed, so the recorded window always covers the fault.
//! A failed action is recorded as a `nemesis-error` point event and the run goes on.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::net::Network;
use crate::proxy::NodeId;
use crate::recorder::Recorder;
use crate::rng::Rng;

/// Quiet time at the start of a run, before the first fault.
pub const QUIET_START_MS: u64 = 2_000;
/// Quiet time at the end of the fault period (after it, everything is healed anyway).
pub const QUIET_END_MS: u64 = 1_000;
/// Quiet time between faults.
pub const QUIET_MS_MIN: u64 = 1_000;
/// Longest quiet time between faults.
pub const QUIET_MS_MAX: u64 = 3_000;
/// Shortest fault window worth injecting.
pub const FAULT_MS_MIN: u64 = 1_000;
/// Largest clock offset the skew nemesis applies.
pub const SKEW_MS_MAX: u64 = 20_000;
/// Longest one membership call may take.
pub const MEMBER_CALL_MS_MAX: u64 = 15_000;
/// How long restoring a removed member may keep trying: removing the leader leaves the
/// cluster leaderless for several seconds, during which no membership change can start.
pub const MEMBER_RESTORE_MS_MAX: u64 = 60_000;
/// Pause between attempts to restore a member.
pub const MEMBER_RESTORE_RETRY_MS: u64 = 500;
/// How long a restore waits for a membership change under way to settle before it takes
/// the joint configuration's voters as they are.
pub const MEMBER_SETTLE_MS_MAX: u64 = 10_000;
/// Most steps a schedule holds (a day-long run at the shortest spacing stays below it).
pub const STEPS_MAX: usize = 100_000;

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NemesisKind {
    /// kill -9 and restart.
    Kill,
    /// SIGSTOP / SIGCONT.
    Pause,
    /// Network partitions.
    Partition,
    /// Added latency between regions.
    Latency,
    /// Clock skew on one node.
    Skew,
    /// Membership change: remove and re-add a node.
    Member,
    /// Partitions that always isolate the current leader (not in `all`: a sharper
    /// `partition`, for the stale-reads control).
    PartitionLeader,
}

impl NemesisKind {
    /// Every kind.
    pub const ALL: [NemesisKind; 6] = [
        NemesisKind::Kill,
        NemesisKind::Pause,
        NemesisKind::Partition,
        NemesisKind::Latency,
        NemesisKind::Skew,
        NemesisKind::Member,
    ];

    /// The kind's name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            NemesisKind::Kill => "kill",
            NemesisKind::Pause => "pause",
            NemesisKind::Partition => "partition",
            NemesisKind::Latency => "latency",
            NemesisKind::Skew => "skew",
            NemesisKind::Member => "member",
            NemesisKind::PartitionLeader => "partition-leader",
        }
    }

    /// Parses a comma-separated list: kind names, `all`, or `none`.
    pub fn parse_list(text: &str) -> Result<Vec<NemesisKind>, String> {
        let mut kinds = BTreeSet::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "none" => {}
                "all" => kinds.extend(NemesisKind::ALL),
                name => {
                    let known = NemesisKind::ALL.into_iter().chain([NemesisKind::PartitionLeader]);
                    let kind = known.clone().find(|k| k.as_str() == name).ok_or_else(|| {
                        let names: Vec<&str> = known.map(|k| k.as_str()).collect();
                        format!("unknown nemesis {name:?} (known: {}, all, none)", names.join(", "))
                    })?;
                    kinds.insert(kind);
                }
            }
        }
        Ok(kinds.into_iter().collect())
    }

    fn window_ms(self) -> (u64, u64) {
        match self {
            NemesisKind::Kill | NemesisKind::Pause => (1_000, 4_000),
            NemesisKind::Latency => (2_000, 6_000),
            // Failover after isolating the leader takes 3-4 s with the default election
            // timeouts, and up to about 7.5 s when the node with the longest log carries
            // openraft's "seen a greater log" penalty (docs/jepsen.md): windows span both.
            NemesisKind::Partition => (3_000, 9_000),
            // Always long enough for the majority to elect a new leader and commit writes
            // the old one has not seen, while clients still read from the old one.
            NemesisKind::PartitionLeader => (9_000, 12_000),
            NemesisKind::Skew => (2_000, 6_000),
            NemesisKind::Member => (3_000, 6_000),
        }
    }
}

/// Which node a fault hits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// This node.
    Node(NodeId),
    /// Whichever node leads when the fault starts.
    Leader,
}

/// A partition's shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// One node cut off from all others.
    Isolate(Target),
    /// These nodes (fewer than half) cut off from the rest.
    Minority(Vec<NodeId>),
    /// Two halves that overlap in one node, the bridge: only the bridge talks to both.
    Bridge(NodeId),
}

/// One fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Fault {
    /// SIGKILL, restart at the end.
    Kill {
        /// Who.
        target: Target,
    },
    /// SIGSTOP, SIGCONT at the end.
    Pause {
        /// Who.
        target: Target,
    },
    /// A partition.
    Partition {
        /// Its shape.
        shape: Shape,
    },
    /// Latency between regions.
    Latency {
        /// One-way delay.
        delay_ms: u64,
        /// Extra random delay, up to.
        jitter_ms: u64,
    },
    /// A node's wall clock moved.
    Skew {
        /// Who.
        node: NodeId,
        /// By how much (negative: behind).
        offset_ms: i64,
    },
    /// Remove a node, re-add it at the end.
    Member {
        /// Who.
        node: NodeId,
    },
}

impl Fault {
    /// The nemesis kind this fault belongs to (a leader partition is a partition).
    pub fn kind(&self) -> NemesisKind {
        match self {
            Fault::Kill { .. } => NemesisKind::Kill,
            Fault::Pause { .. } => NemesisKind::Pause,
            Fault::Partition { .. } => NemesisKind::Partition,
            Fault::Latency { .. } => NemesisKind::Latency,
            Fault::Skew { .. } => NemesisKind::Skew,
            Fault::Member { .. } => NemesisKind::Member,
        }
    }
}

/// One fault window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    /// When the fault starts, ms after the workload starts.
    pub start_ms: u64,
    /// When it is healed.
    pub end_ms: u64,
    /// The fault.
    pub fault: Fault,
}

/// The run's faults, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Schedule {
    /// The seed it came from.
    pub seed: u64,
    /// The enabled kinds.
    pub kinds: Vec<NemesisKind>,
    /// The windows.
    pub steps: Vec<Step>,
}

/// The schedule for `seed`: faults of `kinds` over `duration_ms` on nodes `ids`.
pub fn schedule(seed: u64, kinds: &[NemesisKind], duration_ms: u64, ids: &[NodeId]) -> Schedule {
    let mut rng = Rng::stream(seed, 0x4E45_4D45);
    let mut order: Vec<NemesisKind> = kinds.to_vec();
    order.sort();
    order.dedup();
    rng.shuffle(&mut order);
    let mut steps = Vec::new();
    let end_limit = duration_ms.saturating_sub(QUIET_END_MS);
    let mut t = QUIET_START_MS;
    let mut turn = 0usize;
    while !order.is_empty() && t + FAULT_MS_MIN <= end_limit && steps.len() < STEPS_MAX {
        let kind = order[turn % order.len()];
        turn += 1;
        let (lo, hi) = kind.window_ms();
        let len = rng.between(lo, hi).min(end_limit - t);
        let fault = fault(&mut rng, kind, ids);
        steps.push(Step { start_ms: t, end_ms: t + len, fault });
        t += len + rng.between(QUIET_MS_MIN, QUIET_MS_MAX);
    }
    Schedule { seed, kinds: order, steps }
}

fn target(rng: &mut Rng, ids: &[NodeId]) -> Target {
    if rng.percent(40) {
        Target::Leader
    } else {
        Target::Node(*rng.pick(ids).unwrap_or(&1))
    }
}

fn fault(rng: &mut Rng, kind: NemesisKind, ids: &[NodeId]) -> Fault {
    let node = *rng.pick(ids).unwrap_or(&1);
    match kind {
        NemesisKind::Kill => Fault::Kill { target: target(rng, ids) },
        NemesisKind::Pause => Fault::Pause { target: target(rng, ids) },
        NemesisKind::Partition => {
            let shape = match rng.below(4) {
                0 => Shape::Isolate(Target::Node(node)),
                1 => Shape::Isolate(Target::Leader),
                2 => {
                    let mut shuffled = ids.to_vec();
                    rng.shuffle(&mut shuffled);
                    let mut minority: Vec<NodeId> = shuffled[..(ids.len() / 2).max(1)].to_vec();
                    minority.sort();
                    Shape::Minority(minority)
                }
                _ => Shape::Bridge(node),
            };
            Fault::Partition { shape }
        }
        NemesisKind::Latency => {
            Fault::Latency { delay_ms: rng.between(50, 250), jitter_ms: rng.between(0, 50) }
        }
        NemesisKind::Skew => {
            let magnitude = rng.between(1_000, SKEW_MS_MAX) as i64;
            Fault::Skew { node, offset_ms: if rng.percent(50) { magnitude } else { -magnitude } }
        }
        NemesisKind::Member => Fault::Member { node },
        NemesisKind::PartitionLeader => Fault::Partition { shape: Shape::Isolate(Target::Leader) },
    }
}

/// The cut pairs of a partition shape, with its description (`1 | 2,3`).
fn cut(shape_nodes: (&[NodeId], &[NodeId]), bridge: Option<NodeId>) -> (Vec<(NodeId, NodeId)>, String) {
    let (a, b) = shape_nodes;
    let mut pairs = Vec::new();
    for &x in a {
        for &y in b {
            if Some(x) != bridge && Some(y) != bridge && x != y {
                pairs.push((x, y));
            }
        }
    }
    let show = |side: &[NodeId]| side.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",");
    let description = match bridge {
        Some(b) => format!("{} | {} (bridge {b})", show(a), show(shape_nodes.1)),
        None => format!("{} | {}", show(a), show(b)),
    };
    (pairs, description)
}

/// What the nemesis acts on.
pub struct Env {
    /// The history.
    pub rec: Arc<Recorder>,
    /// The network.
    pub net: Arc<Network>,
    /// The nodes.
    pub cluster: Arc<Cluster>,
    /// An SDK client for membership changes.
    pub admin: seam_client::Client,
    /// For picking "the leader" when it cannot be found.
    pub fallback: std::sync::Mutex<Rng>,
}

/// A fault in progress: what to undo, and the value its closing event repeats.
enum Active {
    Kill(NodeId),
    Pause(NodeId),
    Partition(String),
    Latency(Value),
    Skew(NodeId, Value),
    Member(NodeId),
}

impl Env {
    fn error(&self, during: &str, error: impl std::fmt::Display) {
        eprintln!("seam-jepsen: nemesis {during}: {error}");
        self.rec.nemesis("nemesis-error", json!({"during": during, "error": error.to_string()}));
    }

    /// The current leader: the one named by the highest term among nodes that answer.
    pub async fn leader(&self) -> Option<NodeId> {
        let mut best: Option<(u64, NodeId)> = None;
        for node in &self.net.nodes {
            if let Ok(h) = crate::probe::health(node.metrics).await {
                if let Some(leader) = h.leader {
                    if best.is_none_or(|(term, _)| h.term > term) {
                        best = Some((h.term, leader));
                    }
                }
            }
        }
        best.map(|(_, leader)| leader)
    }

    async fn resolve(&self, target: &Target) -> NodeId {
        match target {
            Target::Node(id) => *id,
            Target::Leader => match self.leader().await {
                Some(id) => id,
                None => {
                    let ids = self.cluster.ids();
                    let mut rng = self.fallback.lock().unwrap_or_else(|p| p.into_inner());
                    *rng.pick(&ids).unwrap_or(&1)
                }
            },
        }
    }

    async fn begin(&self, fault: &Fault) -> Option<Active> {
        match fault {
            Fault::Kill { target } => {
                let id = self.resolve(target).await;
                self.rec.nemesis("kill", json!(id));
                self.cluster.kill(id);
                Some(Active::Kill(id))
            }
            Fault::Pause { target } => {
                let id = self.resolve(target).await;
                self.rec.nemesis("pause", json!(id));
                self.cluster.pause(id);
                Some(Active::Pause(id))
            }
            Fault::Partition { shape } => {
                let ids = self.cluster.ids();
                let (pairs, description) = match shape {
                    Shape::Isolate(target) => {
                        let id = self.resolve(target).await;
                        let rest: Vec<NodeId> = ids.iter().copied().filter(|&n| n != id).collect();
                        cut((&[id], &rest), None)
                    }
                    Shape::Minority(minority) => {
                        let rest: Vec<NodeId> =
                            ids.iter().copied().filter(|n| !minority.contains(n)).collect();
                        cut((minority, &rest), None)
                    }
                    Shape::Bridge(bridge) => {
                        let others: Vec<NodeId> = ids.iter().copied().filter(|n| n != bridge).collect();
                        let half = others.len().div_ceil(2);
                        let mut a = others[..half].to_vec();
                        let mut b = others[half..].to_vec();
                        a.push(*bridge);
                        b.push(*bridge);
                        cut((&a, &b), Some(*bridge))
                    }
                };
                self.rec.nemesis("start-partition", json!(description));
                if let Err(e) = self.net.partition(&pairs) {
                    self.error("start-partition", e);
                }
                Some(Active::Partition(description))
            }
            Fault::Latency { delay_ms, jitter_ms } => {
                let value = json!({"delay_ms": delay_ms, "jitter_ms": jitter_ms});
                self.rec.nemesis("start-latency", value.clone());
                let nodes = &self.net.nodes;
                let mut pairs = Vec::new();
                for a in nodes {
                    for b in nodes {
                        if a.id < b.id && a.region != b.region {
                            pairs.push((a.id, b.id));
                        }
                    }
                }
                self.net.set_latency(&pairs, *delay_ms, *jitter_ms);
                Some(Active::Latency(value))
            }
            Fault::Skew { node, offset_ms } => {
                let value = json!({"node": node, "offset_ms": offset_ms});
                self.rec.nemesis("start-skew", value.clone());
                if let Err(e) = self.cluster.set_skew_ms(*node, *offset_ms) {
                    self.error("start-skew", e);
                }
                Some(Active::Skew(*node, value))
            }
            Fault::Member { node } => {
                // Removing a second node would leave no majority: only remove from a full
                // cluster (a previous restore may still be pending).
                if self.membership_full().await != Some(true) {
                    self.error("start-member", "the membership is not full (or no leader answered); skipped");
                    return None;
                }
                self.rec.nemesis("start-member", json!({"node": node}));
                let admin = self.admin.admin();
                let ids = [*node];
                match tokio::time::timeout(Duration::from_millis(MEMBER_CALL_MS_MAX), admin.remove(&ids))
                    .await
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => self.error("start-member (remove)", crate::workload::error_text(&e)),
                    Err(_) => self.error("start-member (remove)", "no answer in time"),
                }
                Some(Active::Member(*node))
            }
        }
    }

    async fn end(&self, active: Active) {
        match active {
            Active::Kill(id) => {
                if let Err(e) = self.cluster.start(id) {
                    self.error("restart", e);
                }
                self.rec.nemesis("restart", json!(id));
            }
            Active::Pause(id) => {
                self.cluster.resume(id);
                self.rec.nemesis("resume", json!(id));
            }
            Active::Partition(description) => {
                if let Err(e) = self.net.heal() {
                    self.error("stop-partition", e);
                }
                self.rec.nemesis("stop-partition", json!(description));
            }
            Active::Latency(value) => {
                self.net.set_latency(&[], 0, 0);
                self.rec.nemesis("stop-latency", value);
            }
            Active::Skew(node, value) => {
                if let Err(e) = self.cluster.set_skew_ms(node, 0) {
                    self.error("stop-skew", e);
                }
                // libfaketime re-reads its file at most once a second.
                tokio::time::sleep(Duration::from_millis(1_100)).await;
                self.rec.nemesis("stop-skew", value);
            }
            Active::Member(node) => {
                if let Err(e) = self.restore_member(node).await {
                    self.error("stop-member", e);
                }
                self.rec.nemesis("stop-member", json!({"node": node}));
            }
        }
    }

    /// Makes `node` a voter again (learner first, then promoted).
    async fn restore_member(&self, node: NodeId) -> Result<(), String> {
        let info = self.net.nodes.iter().find(|n| n.id == node).ok_or("no such node")?.clone();
        let admin = self.admin.admin();
        let limit = Duration::from_millis(MEMBER_CALL_MS_MAX);
        let mut last = String::from("no leader answered");
        let deadline = Instant::now() + Duration::from_millis(MEMBER_RESTORE_MS_MAX);
        let settle = Instant::now() + Duration::from_millis(MEMBER_SETTLE_MS_MAX);
        while Instant::now() < deadline {
            let step = match self.membership().await {
                // No leader to ask (an election, or the leader just removed itself).
                None => None,
                // A change is under way: a node listed as a voter of the joint
                // configuration may be on its way out. Wait (bounded) until it settles.
                Some(leader) if leader.membership_changing && Instant::now() < settle => {
                    last = "a membership change was still under way".into();
                    None
                }
                Some(leader) => match leader.members.iter().find(|m| m.id == node).map(|m| m.voter) {
                    Some(true) => return Ok(()),
                    Some(false) => Some(tokio::time::timeout(limit, admin.promote(&[node])).await),
                    None => {
                        let addr = info.advertise.to_string();
                        match tokio::time::timeout(limit, admin.add_learner(node, &addr, &info.region)).await
                        {
                            Ok(Ok(_)) => Some(tokio::time::timeout(limit, admin.promote(&[node])).await),
                            other => Some(other),
                        }
                    }
                },
            };
            match step {
                None | Some(Ok(Ok(_))) => {}
                Some(Ok(Err(e))) => last = crate::workload::error_text(&e),
                Some(Err(_)) => last = "no answer in time".into(),
            }
            tokio::time::sleep(Duration::from_millis(MEMBER_RESTORE_RETRY_MS)).await;
        }
        Err(format!("node {node} is still not a voter after {MEMBER_RESTORE_MS_MAX} ms: {last}"))
    }

    /// The current leader's own report, with the membership as it knows it (`None`: no
    /// node answered as leader).
    async fn membership(&self) -> Option<seam_client::NodeStatus> {
        let limit = Duration::from_millis(MEMBER_CALL_MS_MAX);
        let status = tokio::time::timeout(limit, self.admin.admin().status_all()).await.ok()?.ok()?;
        status.leader_view().cloned()
    }

    /// Whether every node is a voter, in the leader's view (`None`: no leader).
    async fn membership_full(&self) -> Option<bool> {
        let members = self.membership().await?.members;
        Some(self.cluster.ids().iter().all(|id| members.iter().any(|m| m.id == *id && m.voter)))
    }

    /// Undoes every fault the nemesis might have left: heals the network, removes
    /// latency and skew, resumes and restarts nodes, makes every node a voter again.
    pub async fn heal_all(&self) {
        if let Err(e) = self.net.heal() {
            self.error("heal", e);
        }
        self.net.set_latency(&[], 0, 0);
        for id in self.cluster.ids() {
            self.cluster.resume(id);
            if !self.cluster.is_running(id) {
                if let Err(e) = self.cluster.start(id) {
                    self.error("heal (restart)", e);
                }
            }
            let _ = self.cluster.set_skew_ms(id, 0);
        }
        // The member nemesis restores what it removed; this catches a restore that failed.
        for id in self.cluster.ids() {
            if let Err(e) = self.restore_member(id).await {
                self.error("heal (membership)", e);
            }
        }
    }
}

/// How a wait ended.
#[derive(PartialEq, Eq)]
enum Wait {
    /// The deadline came.
    Reached,
    /// The run told the nemesis to stop: heal what is active.
    Stopped,
    /// The run was dropped (interrupted): its teardown removes everything, heal nothing.
    Abandoned,
}

/// Runs `schedule` from `start` until it ends or `stop` is set; heals what is active on
/// the way out. Also watches for nodes that exit on their own (recorded as `crash`).
pub async fn run(env: &Env, schedule: &Schedule, start: Instant, mut stop: watch::Receiver<bool>) {
    for step in &schedule.steps {
        if wait_until(env, start + Duration::from_millis(step.start_ms), &mut stop).await != Wait::Reached {
            return;
        }
        let Some(active) = env.begin(&step.fault).await else { continue };
        match wait_until(env, start + Duration::from_millis(step.end_ms), &mut stop).await {
            Wait::Reached => env.end(active).await,
            Wait::Stopped => {
                env.end(active).await;
                return;
            }
            Wait::Abandoned => return,
        }
    }
    // After the last fault: keep watching for crashes until told to stop.
    while wait_until(env, Instant::now() + Duration::from_secs(3_600), &mut stop).await == Wait::Reached {}
}

/// Sleeps until `deadline`, checking for crashes each second.
async fn wait_until(env: &Env, deadline: Instant, stop: &mut watch::Receiver<bool>) -> Wait {
    loop {
        if *stop.borrow() {
            return Wait::Stopped;
        }
        for exit in env.cluster.check_exits() {
            env.rec.nemesis("crash", json!({"node": exit.node, "status": exit.status}));
        }
        let now = Instant::now();
        if now >= deadline {
            return Wait::Reached;
        }
        let nap = (deadline - now).min(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            changed = stop.changed() => {
                if changed.is_err() {
                    return Wait::Abandoned;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_schedule_and_every_kind_appears() {
        let kinds = NemesisKind::ALL.to_vec();
        let a = schedule(7, &kinds, 60_000, &[1, 2, 3]);
        let b = schedule(7, &kinds, 60_000, &[1, 2, 3]);
        assert_eq!(a, b);
        assert_ne!(a, schedule(8, &kinds, 60_000, &[1, 2, 3]));
        let seen: BTreeSet<&str> = a.steps.iter().map(|s| s.fault.kind().as_str()).collect();
        assert_eq!(seen.len(), 6, "{a:?}");
        for pair in a.steps.windows(2) {
            assert!(pair[0].end_ms < pair[1].start_ms, "one fault at a time");
        }
        assert!(a.steps.last().is_some_and(|s| s.end_ms <= 60_000 - QUIET_END_MS));
    }

    #[test]
    fn lists_parse() {
        assert_eq!(NemesisKind::parse_list("kill,pause"), Ok(vec![NemesisKind::Kill, NemesisKind::Pause]));
        assert_eq!(NemesisKind::parse_list("none"), Ok(vec![]));
        assert_eq!(NemesisKind::parse_list("all").map(|k| k.len()), Ok(6));
        assert!(NemesisKind::parse_list("flood").is_err());
    }

    #[test]
    fn bridge_keeps_the_bridge_connected() {
        let (pairs, _) = cut((&[1, 3], &[2, 3]), Some(3));
        assert_eq!(pairs, vec![(1, 2)]);
        let (pairs, text) = cut((&[1], &[2, 3]), None);
        assert_eq!(pairs, vec![(1, 2), (1, 3)]);
        assert_eq!(text, "1 | 2,3");
    }
}
