//! Disk and memory after appending, applying, snapshotting and purging many entries.
//!
//! ```text
//! cargo run --release -p seam-raft-storage --example footprint            # 1,000,000 entries
//! cargo run --release -p seam-raft-storage --example footprint -- 200000  # fewer
//! ```
//!
//! Entries are puts over 1,000 distinct keys (100-byte values), so the state itself stays
//! small and what remains is the storage's own overhead. Like openraft with its defaults, it
//! snapshots every 100,000 applied entries and purges the log up to 1,000 entries before
//! the snapshot; at the end it snapshots and purges everything. Set `SEAM_BENCH_DIR` to
//! measure another disk.

use std::path::Path;

use openraft::storage::RaftLogStorage;
use openraft::storage::RaftLogStorageExt;
use openraft::storage::RaftStateMachine;
use openraft::testing::log_id;
use openraft::EntryPayload;
use openraft::RaftLogReader;
use openraft::RaftSnapshotBuilder;
use seam_raft_storage::*;

const BATCH: u64 = 256;
const SNAPSHOT_EVERY: u64 = 100_000;
const KEEP_AFTER_SNAPSHOT: u64 = 1_000;
const KEYS: u64 = 1_000;

fn entry(index: u64) -> Entry {
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(Request {
            stamp_ms: 1_700_000_000_000 + index,
            idempotency: None,
            command: Command::Put {
                key: format!("footprint/{:04}", index % KEYS).into_bytes(),
                value: vec![0x5a; 100],
                token: None,
            },
        }),
    }
}

/// (apparent bytes, allocated bytes) of the files under `dir`.
fn disk(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    let Ok(items) = std::fs::read_dir(dir) else { return total };
    for item in items.flatten() {
        let Ok(meta) = item.metadata() else { continue };
        if meta.is_dir() {
            let (a, b) = disk(&item.path());
            total = (total.0 + a, total.1 + b);
        } else {
            total = (total.0 + meta.len(), total.1 + meta.blocks() * 512);
        }
    }
    total
}

/// (VmRSS, VmHWM) in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn report(label: &str, dir: &Path, log: &LogStore, sm: &StateMachineStore) {
    let (rss, peak) = rss();
    let part = |name: &str| {
        let (apparent, allocated) = disk(&dir.join(name));
        format!("{name}/ {} ({} allocated)", mib(apparent), mib(allocated))
    };
    println!(
        "{label}: RSS {} (peak {}); {}, {} segments; {}, sled size_on_disk {}; {}",
        mib(rss),
        mib(peak),
        part("log"),
        log.segment_count(),
        part("sm"),
        mib(sm.sled_size_on_disk().unwrap_or(0)),
        part("snapshots"),
    );
}

fn main() {
    let entries: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let base =
        std::env::var_os("SEAM_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::TempDir::new_in(base).expect("dir");
    let dir = tmp.path().join("data");
    let config = StorageConfig::new("footprint", 1);
    println!(
        "footprint: {entries} entries in {}; segment_bytes_max {}, sm_cache_bytes {}",
        dir.display(),
        mib(config.segment_bytes_max),
        mib(config.sm_cache_bytes)
    );
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let (mut log, mut sm) = open(&dir, config).expect("open");
        report("start", &dir, &log, &sm);
        let start = std::time::Instant::now();
        let mut last = 0;
        let mut snapshot_at = 0;
        while last < entries {
            let end = (last + BATCH).min(entries);
            log.blocking_append((last + 1..=end).map(entry)).await.expect("append");
            let applied = log.try_get_log_entries(last + 1..=end).await.expect("read");
            log.save_committed(Some(log_id(1, 1, end))).await.expect("committed");
            sm.apply(applied).await.expect("apply");
            last = end;
            if last >= snapshot_at + SNAPSHOT_EVERY || last == entries {
                sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
                snapshot_at = last;
                let upto = if last == entries { last } else { last - KEEP_AFTER_SNAPSHOT };
                log.purge(log_id(1, 1, upto)).await.expect("purge");
                if last % 200_000 < SNAPSHOT_EVERY || last == entries {
                    report(&format!("after {last} entries"), &dir, &log, &sm);
                }
            }
        }
        let elapsed = start.elapsed();
        println!(
            "appended, applied and purged {entries} entries in {:.1} s ({:.0} entries/s)",
            elapsed.as_secs_f64(),
            entries as f64 / elapsed.as_secs_f64()
        );
        sm.flush().await.expect("flush sled");
        report("end (sled flushed)", &dir, &log, &sm);
        let state = log.get_log_state().await.expect("log state");
        println!(
            "log: purged {:?}, last {:?}; state: {} keys, {} bytes",
            state.last_purged_log_id.map(|l| l.index),
            state.last_log_id.map(|l| l.index),
            sm.state().read().key_count(),
            sm.state().read().sacred_bytes()
        );
    });
}
