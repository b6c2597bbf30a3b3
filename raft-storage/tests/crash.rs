//! A real crash: a child process appends, votes, truncates, applies, snapshots and purges
//! in a loop, printing what was acknowledged durable; the parent SIGKILLs it at a random
//! moment, reopens the directory and checks that everything acknowledged is there, that
//! the applied state is consistent with the log, and that nothing is torn. Several rounds
//! on one directory, each child continuing from what the last one left.
//!
//! Seeded: the seed is printed, and `SEAM_TEST_SEED=<seed>` replays the same schedule of
//! kill delays and child choices (process timing itself is not reproducible).
//!
//! The child is this test binary, re-executed to run `crash_child` (a no-op test unless
//! the parent set `SEAM_CRASH_CHILD_DIR`).

mod common;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftLogStorageExt;
use openraft::storage::RaftStateMachine;
use openraft::testing::log_id;
use openraft::RaftLogReader;
use openraft::RaftSnapshotBuilder;
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;
use seam_raft_storage::*;
use tempfile::TempDir;

const CHILD_DIR: &str = "SEAM_CRASH_CHILD_DIR";
const CHILD_SEED: &str = "SEAM_CRASH_CHILD_SEED";
/// Rounds of run-and-kill (`SEAM_CRASH_ROUNDS` overrides).
const ROUNDS_DEFAULT: u64 = 8;
/// The child builds a snapshot every this many applied entries, then purges the log up to
/// `SNAPSHOT_EVERY / 4` entries before it.
const SNAPSHOT_EVERY: u64 = 200;

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    // A failed write means the parent is gone; the child is about to be killed anyway.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The child's loop. Every line it prints states something that is durable by then.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else { return };
    let seed: u64 = std::env::var(CHILD_SEED).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    runtime().block_on(child(PathBuf::from(dir), seed));
}

async fn child(dir: PathBuf, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut log, mut sm) = seam_raft_storage::open(&dir, config()).expect("the child opens the directory");
    let mut term = log.read_vote().await.expect("vote").map_or(0, |v| v.leader_id.term) + 1;
    log.save_vote(&Vote::new_committed(term, 1)).await.expect("vote");
    say(format!("VOTE {term}"));
    let mut last = log.get_log_state().await.expect("log state").last_log_id.map_or(0, |l| l.index);

    // What openraft does on start: re-apply the committed entries sled lost.
    let mut applied = sm.applied_state().await.expect("applied").0.map_or(0, |l| l.index);
    let committed = log.read_committed().await.expect("committed").map_or(0, |l| l.index);
    if committed > applied {
        let entries = log.try_get_log_entries(applied + 1..=committed).await.expect("read");
        assert_eq!(entries.len() as u64, committed - applied, "the log holds what sled lost");
        sm.apply(entries).await.expect("re-apply");
        applied = committed;
    }
    let mut snapshot_at = applied;
    say("READY".into());

    loop {
        match rng.gen_range(0..10) {
            // Several appends in flight at once: their callbacks share syncs.
            0 | 1 => {
                for _ in 0..4 {
                    let (start, end) = (last + 1, last + rng.gen_range(1..=32));
                    last = end;
                    let batch = (start..=end).map(|i| put(term, i));
                    log.append_notify(batch, move |result| {
                        result.expect("append flushed");
                        say(format!("ACK {start} {end} {term}"));
                    })
                    .await
                    .expect("append");
                }
            }
            // A new leader replaces the uncommitted tail.
            2 if last > applied + 8 => {
                let since = last - 2;
                say(format!("TRUNCATE {since}"));
                log.truncate(log_id(term, 1, since)).await.expect("truncate");
                term += 1;
                log.save_vote(&Vote::new_committed(term, 1)).await.expect("vote");
                say(format!("VOTE {term}"));
                last = since - 1;
            }
            _ => {}
        }
        let (start, end) = (last + 1, last + rng.gen_range(1..=32));
        last = end;
        log.blocking_append((start..=end).map(|i| put(term, i))).await.expect("append");
        say(format!("ACK {start} {end} {term}"));

        // Commit and apply all but the last few entries.
        let commit_to = last.saturating_sub(5);
        if commit_to > applied {
            let entries = log.try_get_log_entries(applied + 1..=commit_to).await.expect("read");
            let committed = entries.last().map(|e| e.log_id);
            log.save_committed(committed).await.expect("committed");
            sm.apply(entries).await.expect("apply");
            applied = commit_to;
            say(format!("APPLIED {applied}"));
        }
        if applied >= snapshot_at + SNAPSHOT_EVERY {
            let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
            snapshot_at = applied;
            say(format!("SNAPSHOT {}", snapshot.meta.last_log_id.expect("non-empty").index));
            let upto = applied - SNAPSHOT_EVERY / 4;
            let id = log.try_get_log_entries(upto..=upto).await.expect("read")[0].log_id;
            log.purge(id).await.expect("purge");
            say(format!("PURGED {upto}"));
        }
    }
}

/// What the children acknowledged, as the parent learned it from their output.
#[derive(Debug, Default)]
struct Acked {
    /// Index -> term of its latest acknowledged version (dropped when truncated).
    entries: BTreeMap<u64, u64>,
    vote: u64,
    purged: u64,
    snapshot: u64,
    lines: usize,
}

impl Acked {
    fn learn(&mut self, line: &str) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok()).expect("a number");
        match words.first().copied() {
            Some("ACK") => (num(1)..=num(2)).for_each(|i| {
                self.entries.insert(i, num(3));
            }),
            Some("TRUNCATE") => {
                self.entries.split_off(&num(1));
            }
            Some("VOTE") => self.vote = num(1),
            Some("PURGED") => self.purged = num(1),
            Some("SNAPSHOT") => self.snapshot = num(1),
            _ => return,
        }
        self.lines += 1;
    }
}

/// Kills the child if the parent fails half-way.
struct Killer(Child);

impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_child_and_kill(dir: &Path, child_seed: u64, kill_after: Duration, acked: &mut Acked) {
    let exe = std::env::current_exe().expect("test binary");
    let child = std::process::Command::new(exe)
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env(CHILD_SEED, child_seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let mut child = Killer(child);
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        // Only whole lines count: a line cut by the kill was not fully acknowledged.
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
        let line = line.expect("the child reports READY");
        acked.learn(&line);
        if line == "READY" {
            break;
        }
    }
    std::thread::sleep(kill_after);
    child.0.kill().expect("SIGKILL the child");
    let status = child.0.wait().expect("wait");
    assert!(!status.success(), "the child was killed, not finished: {status:?}");
    reader.join().expect("reader");
    for line in rx.try_iter() {
        acked.learn(&line);
    }
}

/// Reopens the directory and checks it against what was acknowledged.
async fn check(dir: &Path, acked: &Acked) -> (u64, u64, u64) {
    let (mut log, mut sm) =
        seam_raft_storage::open(dir, config()).expect("a crashed directory reopens: no torn state");
    let vote = log.read_vote().await.expect("vote").expect("a vote");
    assert!(vote.leader_id.term >= acked.vote, "vote {vote} lost the acknowledged term {}", acked.vote);
    let state = log.get_log_state().await.expect("log state");
    let purged = state.last_purged_log_id.map_or(0, |l| l.index);
    let last = state.last_log_id.map_or(0, |l| l.index);
    assert!(purged >= acked.purged, "purge to {} was synced, found {purged}", acked.purged);

    // Every entry present is exactly one that was written (no torn or mixed content).
    let entries = log.try_get_log_entries(..).await.expect("read the log");
    assert_eq!(entries.len() as u64, last - purged, "the live log is contiguous");
    let mut terms = BTreeMap::new();
    for (n, entry) in entries.iter().enumerate() {
        let index = purged + 1 + n as u64;
        assert_eq!(entry.log_id.index, index);
        assert_eq!(*entry, put(entry.log_id.leader_id.term, index), "entry {index} is intact");
        terms.insert(index, entry.log_id.leader_id.term);
    }

    // Every acknowledged entry is there, in its acknowledged version.
    let (applied, _) = sm.applied_state().await.expect("applied");
    let applied = applied.map_or(0, |l| l.index);
    assert!(purged <= applied, "purged {purged} <= applied {applied}");
    assert!(applied <= last, "applied {applied} <= last log index {last}");
    let snapshot = sm.get_current_snapshot().await.expect("read snapshot").map(|s| s.meta.last_log_id);
    let snapshot = snapshot.flatten().map_or(0, |l| l.index);
    assert!(snapshot >= acked.snapshot, "snapshot {snapshot} lost the acknowledged {}", acked.snapshot);
    assert!(
        purged <= snapshot && snapshot <= applied,
        "purged {purged} <= snapshot {snapshot} <= applied {applied}"
    );
    let handle = sm.state();
    let state = handle.read();
    for (&index, &term) in &acked.entries {
        if index > purged {
            assert_eq!(
                terms.get(&index),
                Some(&term),
                "acknowledged entry {index} (term {term}) is in the log"
            );
        } else {
            let kv = state.get(&key(index));
            assert_eq!(
                kv.map(|kv| kv.value.clone()),
                Some(value(term, index)),
                "purged entry {index} is applied"
            );
        }
    }

    // The applied state is exactly the log applied up to `applied`.
    for index in 1..=applied {
        let kv = state.get(&key(index)).unwrap_or_else(|| panic!("applied entry {index} is in the state"));
        assert_eq!(kv.mod_revision, index);
        if let Some(term) = terms.get(&index) {
            assert_eq!(kv.value, value(*term, index), "state of entry {index} matches the log");
        }
    }
    assert!(state.get(&key(applied + 1)).is_none(), "nothing past applied {applied} is in the state");
    (purged, applied, last)
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let seed = std::env::var("SEAM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen::<u64>());
    let rounds =
        std::env::var("SEAM_CRASH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(ROUNDS_DEFAULT);
    println!("crash test seed {seed}: SEAM_TEST_SEED={seed} reproduces the schedule");
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = TempDir::new().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut acked = Acked::default();
    let rt = runtime();
    for round in 0..rounds {
        let kill_after = Duration::from_millis(rng.gen_range(5..250));
        let before = acked.lines;
        run_child_and_kill(&dir, rng.gen(), kill_after, &mut acked);
        let (purged, applied, last) = rt.block_on(check(&dir, &acked));
        println!(
            "round {round}: killed after {kill_after:?}, {} lines acknowledged; reopened with purged {purged}, \
             applied {applied}, last {last}, {} segments",
            acked.lines - before,
            segments(&dir).len()
        );
    }
    assert!(acked.purged > 0, "the schedule exercised purges (seed {seed})");
}
