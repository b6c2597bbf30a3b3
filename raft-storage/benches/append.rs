//! Durable append benchmark. Prints figures; asserts nothing about time.
//!
//! ```text
//! cargo bench -p seam-raft-storage --bench append
//! SEAM_BENCH_DIR=/path/on/the/disk/to/measure cargo bench -p seam-raft-storage --bench append
//! ```
//!
//! 1. Raw `fdatasync` latency of the same disk: append a 200-byte record to a file with
//!    `pwrite`, then `fdatasync` it; the least a durable append can cost. Measured in rounds
//!    interleaved with the single-entry appends below, so that both see the same disk.
//! 2. Durable appends through [`LogStore::append_notify`] (the same path as openraft's
//!    `append`), latency measured until the callback fires:
//!    - one batch in flight at a time, with 1, 16 and 256 entries per batch;
//!    - up to 64 batches in flight (what a busy leader does), which shows group commit.
//! 3. The ratio of the single-entry append p50 to the raw fdatasync p50.

use std::fs::File;
use std::io::StdoutLock;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Duration;
use std::time::Instant;

use openraft::testing::log_id;
use openraft::EntryPayload;
use seam_raft_storage::*;
use tokio::sync::mpsc;

/// Samples of the raw fdatasync measurement.
const RAW_SAMPLES: usize = 2000;
/// Single-entry appends measured, interleaved with the raw samples.
const SINGLE_SAMPLES: usize = 3000;
/// Rounds the raw and the single-entry measurements alternate in.
const ROUNDS: usize = 10;
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

/// `samples` times: append a 200-byte record at the end of `file` (`written` bytes long)
/// with `pwrite`, then `fdatasync`.
fn raw_fdatasync(file: &File, written: &mut u64, samples: usize) -> Vec<Duration> {
    let record = [0x5au8; 200];
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        file.write_all_at(&record, *written).expect("pwrite");
        file.sync_data().expect("fdatasync");
        out.push(start.elapsed());
        *written += record.len() as u64;
    }
    out
}

/// Appends `batches` batches of `batch` entries with at most `in_flight` outstanding;
/// returns per-batch latencies (until the callback) and the total wall time.
async fn run(
    log: &mut LogStore,
    next: &mut u64,
    batch: u64,
    batches: usize,
    in_flight: usize,
) -> (Vec<Duration>, Duration) {
    assert!(in_flight <= IN_FLIGHT_MAX);
    // Room for every outstanding callback: at most `in_flight <= IN_FLIGHT_MAX`.
    let (tx, mut rx) = mpsc::channel::<Duration>(IN_FLIGHT_MAX);
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
            tx.try_send(submitted.elapsed()).expect("room for every outstanding callback");
        })
        .await
        .expect("append");
        outstanding += 1;
    }
    while outstanding > 0 {
        samples.push(rx.recv().await.expect("callback"));
        outstanding -= 1;
    }
    (samples, start.elapsed())
}

fn row(
    out: &mut StdoutLock,
    label: &str,
    entries: usize,
    batches: usize,
    total: Duration,
    s: &Stats,
    syncs: u64,
) {
    let secs = total.as_secs_f64();
    writeln!(
        out,
        "{label:<34} {:>12.0} {:>12.0} {:>10} {:>10} {:>14.1}",
        entries as f64 / secs,
        batches as f64 / secs,
        ms(s.p50),
        ms(s.p99),
        batches as f64 / syncs.max(1) as f64
    )
    .ok();
}

fn main() {
    // `cargo bench` passes `--bench`; this binary takes no other arguments.
    let base =
        std::env::var_os("SEAM_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::TempDir::new_in(&base).expect("bench dir");
    let dir = tmp.path();
    let mut out = std::io::stdout().lock();
    writeln!(out, "seam-raft-storage append benchmark in {} (2 tokio workers)", dir.display()).ok();
    let raw_path = dir.join("raw-fdatasync.dat");
    let raw_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&raw_path)
        .expect("raw file");

    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let (mut log, _sm) = open(dir.join("data"), StorageConfig::new("bench", 1)).expect("open");
        let mut next = 1;
        // Warm up: page cache, first segment growth.
        run(&mut log, &mut next, 16, 200, 1).await;

        let (mut raw_samples, mut single_samples, mut raw_written, mut single_time) =
            (Vec::new(), Vec::new(), 0, Duration::ZERO);
        let syncs_before = log.flush_stats().fdatasyncs;
        for _ in 0..ROUNDS {
            raw_samples.extend(raw_fdatasync(&raw_file, &mut raw_written, RAW_SAMPLES / ROUNDS));
            let (samples, total) = run(&mut log, &mut next, 1, SINGLE_SAMPLES / ROUNDS, 1).await;
            single_samples.extend(samples);
            single_time += total;
        }
        let raw = stats(raw_samples);
        writeln!(
            out,
            "raw pwrite+fdatasync (200 B, {RAW_SAMPLES} samples): p50 {}  p99 {}  max {}",
            ms(raw.p50),
            ms(raw.p99),
            ms(raw.max)
        )
        .ok();
        writeln!(
            out,
            "{:<34} {:>12} {:>12} {:>10} {:>10} {:>14}",
            "durable append", "entries/s", "batches/s", "p50", "p99", "batches/sync"
        )
        .ok();
        let single = stats(single_samples);
        let syncs = log.flush_stats().fdatasyncs - syncs_before;
        row(
            &mut out,
            "1 entries/batch, 1 in flight",
            SINGLE_SAMPLES,
            SINGLE_SAMPLES,
            single_time,
            &single,
            syncs,
        );
        for (batch, batches, in_flight) in [
            (16, 1500, 1),
            (256, 300, 1),
            (1, 20_000, IN_FLIGHT_MAX),
            (16, 6000, IN_FLIGHT_MAX),
            (256, 1000, IN_FLIGHT_MAX),
        ] {
            let syncs_before = log.flush_stats().fdatasyncs;
            let (samples, total) = run(&mut log, &mut next, batch, batches, in_flight).await;
            let syncs = log.flush_stats().fdatasyncs - syncs_before;
            let label = format!("{batch} entries/batch, {in_flight} in flight");
            row(&mut out, &label, batch as usize * batches, batches, total, &stats(samples), syncs);
        }
        writeln!(out, "log: {} segments of at most 64 MiB, {} entries", log.segment_count(), next - 1).ok();
        writeln!(
            out,
            "single-entry durable append p50 / raw fdatasync p50 = {:.2} (target <= 1.5); p99 ratio {:.2}",
            single.p50.as_secs_f64() / raw.p50.as_secs_f64(),
            single.p99.as_secs_f64() / raw.p99.as_secs_f64()
        )
        .ok();
    });
    drop(raw_file);
    std::fs::remove_file(&raw_path).expect("remove raw file");
}
