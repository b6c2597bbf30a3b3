//! Durable append benchmark. Prints figures; asserts nothing about time.
//!
//! ```text
//! cargo bench -p seam-raft-storage --bench append
//! SEAM_BENCH_DIR=/path/on/the/disk/to/measure cargo bench -p seam-raft-storage --bench append
//! ```
//!
//! 1. Raw `fdatasync` latency of the same disk: append a 200-byte record to a file with
//!    `pwrite`, then `fdatasync` it; the least a durable append can cost.
//! 2. Durable appends through [`LogStore::append_notify`] (the same path as openraft's
//!    `append`), latency measured until the callback fires:
//!    - one batch in flight at a time, with 1, 16 and 256 entries per batch;
//!    - up to 64 batches in flight (what a busy leader does), which shows group commit.
//! 3. The ratio of the single-entry append p50 to the raw fdatasync p50.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;

use openraft::testing::log_id;
use openraft::EntryPayload;
use seam_raft_storage::*;
use tokio::sync::mpsc;

/// Samples of the raw fdatasync measurement.
const RAW_SAMPLES: usize = 2000;
/// Batches in flight in the pipelined runs.
const IN_FLIGHT_MAX: usize = 64;

fn entry(index: u64) -> Entry {
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(Request {
            stamp_ms: 1_700_000_000_000 + index,
            idempotency: Some(IdempotencyKey { client_id: "bench-client".into(), request_id: index }),
            command: Command::Put {
                key: format!("bench/key/{:08}", index % 10_000).into_bytes(),
                value: vec![0x5a; 100],
                token: None,
            },
        }),
    }
}

struct Stats {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Stats { p50: at(0.50), p99: at(0.99), max: samples[samples.len() - 1] }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn raw_fdatasync(dir: &Path) -> Stats {
    let path = dir.join("raw-fdatasync.dat");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("raw file");
    let record = [0x5au8; 200];
    let mut samples = Vec::with_capacity(RAW_SAMPLES);
    for i in 0..RAW_SAMPLES as u64 {
        let start = Instant::now();
        file.write_all_at(&record, i * record.len() as u64).expect("pwrite");
        file.sync_data().expect("fdatasync");
        samples.push(start.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path).expect("remove raw file");
    stats(samples)
}

/// Appends `batches` batches of `batch` entries with at most `in_flight` outstanding;
/// returns per-batch latencies (until the callback) and the total wall time.
async fn run(
    log: &mut LogStore,
    next: &mut u64,
    batch: u64,
    batches: usize,
    in_flight: usize,
) -> (Stats, Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Duration>();
    let mut samples = Vec::with_capacity(batches);
    let mut outstanding = 0;
    let start = Instant::now();
    for _ in 0..batches {
        while outstanding >= in_flight {
            samples.push(rx.recv().await.expect("callback"));
            outstanding -= 1;
        }
        let first = *next;
        *next += batch;
        let entries: Vec<Entry> = (first..first + batch).map(entry).collect();
        let tx = tx.clone();
        let submitted = Instant::now();
        log.append_notify(entries, move |result| {
            result.expect("durable append");
            let _ = tx.send(submitted.elapsed());
        })
        .await
        .expect("append");
        outstanding += 1;
    }
    while outstanding > 0 {
        samples.push(rx.recv().await.expect("callback"));
        outstanding -= 1;
    }
    (stats(samples), start.elapsed())
}

fn main() {
    // `cargo bench` passes `--bench`; this binary takes no other arguments.
    let base =
        std::env::var_os("SEAM_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::TempDir::new_in(&base).expect("bench dir");
    let dir = tmp.path();
    let mut out = std::io::stdout().lock();
    writeln!(out, "seam-raft-storage append benchmark in {} (2 tokio workers)", dir.display()).ok();

    let raw = raw_fdatasync(dir);
    writeln!(
        out,
        "raw pwrite+fdatasync (200 B, {RAW_SAMPLES} samples): p50 {}  p99 {}  max {}",
        ms(raw.p50),
        ms(raw.p99),
        ms(raw.max)
    )
    .ok();

    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let single_p50 = rt.block_on(async {
        let (mut log, _sm) = open(dir.join("data"), StorageConfig::new("bench", 1)).expect("open");
        let mut next = 1;
        // Warm up: page cache, first segment growth.
        run(&mut log, &mut next, 16, 200, 1).await;
        writeln!(
            out,
            "{:<34} {:>12} {:>12} {:>10} {:>10}",
            "durable append", "entries/s", "batches/s", "p50", "p99"
        )
        .ok();
        let mut single_p50 = Duration::ZERO;
        for (batch, batches, in_flight) in [
            (1, 3000, 1),
            (16, 1500, 1),
            (256, 300, 1),
            (1, 20_000, IN_FLIGHT_MAX),
            (16, 6000, IN_FLIGHT_MAX),
            (256, 1000, IN_FLIGHT_MAX),
        ] {
            let (s, total) = run(&mut log, &mut next, batch, batches, in_flight).await;
            let secs = total.as_secs_f64();
            writeln!(
                out,
                "{:<34} {:>12.0} {:>12.0} {:>10} {:>10}",
                format!("{batch} entries/batch, {in_flight} in flight"),
                (batch as usize * batches) as f64 / secs,
                batches as f64 / secs,
                ms(s.p50),
                ms(s.p99)
            )
            .ok();
            if batch == 1 && in_flight == 1 {
                single_p50 = s.p50;
            }
        }
        writeln!(out, "log: {} segments of at most 64 MiB, {} entries", log.segment_count(), next - 1).ok();
        single_p50
    });

    let raw_after = raw_fdatasync(dir);
    writeln!(
        out,
        "raw pwrite+fdatasync again after the runs: p50 {}  p99 {}",
        ms(raw_after.p50),
        ms(raw_after.p99)
    )
    .ok();
    writeln!(
        out,
        "single-entry durable append p50 / raw fdatasync p50 = {:.2} (target <= 1.5)",
        single_p50.as_secs_f64() / raw.p50.as_secs_f64()
    )
    .ok();
}
