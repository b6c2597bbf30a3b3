//! The sync proof: run appends in a child under `strace` and show, from the kernel's own
//! record of system calls, that every acknowledged append was preceded by an `fdatasync`
//! (or `fsync`) of the segment file that holds it, begun after the entry was written and
//! finished before the acknowledgement.
//!
//! Runs when `strace` is on PATH (CI installs it); otherwise it prints that it was skipped.
//! The child (this test binary, re-executed to run `strace_child`) prints
//! `ACK <index> <segment path> <offset>` once an append's callback has fired; `strace -y`
//! names the file behind every descriptor, so each `pwrite64` and `fdatasync` can be tied
//! to a segment path.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

use common::*;
use openraft::storage::RaftLogStorageExt;
use seam_raft_storage::*;
use tempfile::TempDir;

const CHILD_DIR: &str = "SEAM_STRACE_CHILD_DIR";
/// Entries the child appends: singly, then in pipelined batches.
const APPENDS: u64 = 120;

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[test]
fn strace_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else { return };
    runtime().block_on(async move {
        let config = StorageConfig { segment_bytes_max: 8 * 1024, ..config() };
        let (mut log, _sm) = seam_raft_storage::open(PathBuf::from(dir), config).expect("open");
        // One at a time: each acknowledgement waits for its own sync.
        for i in 1..=APPENDS / 2 {
            log.blocking_append([put(1, i)]).await.expect("append");
            let (path, offset) = log.entry_location(i).expect("located");
            say(format!("ACK {i} {} {offset}", path.display()));
        }
        // Pipelined: four appends in flight at once share syncs (group commit). Each is
        // acknowledged once its callback fired.
        let mut next = APPENDS / 2 + 1;
        while next <= APPENDS {
            let mut in_flight = Vec::new();
            for _ in 0..4 {
                let (start, end) = (next, (next + 1).min(APPENDS));
                if start > end {
                    break;
                }
                next = end + 1;
                let (tx, rx) = tokio::sync::oneshot::channel();
                log.append_notify((start..=end).map(|j| put(1, j)), move |result| {
                    let _ = tx.send(result);
                })
                .await
                .expect("append");
                let located: Vec<_> =
                    (start..=end).map(|j| (j, log.entry_location(j).expect("located"))).collect();
                in_flight.push((rx, located));
            }
            for (rx, located) in in_flight {
                rx.await.expect("callback").expect("flushed");
                for (j, (path, offset)) in located {
                    say(format!("ACK {j} {} {offset}", path.display()));
                }
            }
        }
        say("DONE".into());
    });
}

/// One system call as strace recorded it: where it began and ended in the output.
#[derive(Debug, Clone)]
struct Call {
    name: String,
    path: Option<String>,
    /// `(count, offset)` of a `pwrite64`.
    span: Option<(u64, u64)>,
    /// The text a `write` to stdout carried.
    text: Option<String>,
    begin: usize,
    end: usize,
    result: Option<i64>,
}

/// Splits `args) = result ...` at the closing parenthesis of the call (strace pads the
/// result of resumed calls with spaces).
fn split_result(s: &str) -> (&str, Option<i64>) {
    for (i, _) in s.rmatch_indices(')') {
        if let Some(result) = s[i + 1..].trim_start().strip_prefix('=') {
            return (&s[..i], result.split_whitespace().next().and_then(|r| r.parse().ok()));
        }
    }
    (s, None)
}

/// Parses `strace -f -y -s N` output into calls, joining `<unfinished ...>` and
/// `<... resumed>` halves by pid.
fn parse(trace: &str) -> Vec<Call> {
    let mut calls: Vec<Call> = Vec::new();
    let mut pending: HashMap<String, usize> = HashMap::new();
    for (line_no, line) in trace.lines().enumerate() {
        let Some((pid, rest)) = line.split_once(' ') else { continue };
        let rest = rest.trim_start();
        if rest.starts_with("<... ") {
            let Some(i) = pending.remove(pid) else { continue };
            calls[i].end = line_no;
            calls[i].result = split_result(rest).1;
            continue;
        }
        let Some((name, args)) = rest.split_once('(') else { continue };
        if !["write", "pwrite64", "fsync", "fdatasync", "sync_file_range"].contains(&name) {
            continue;
        }
        let path = args.split_once('<').and_then(|(_, p)| p.split_once('>')).map(|(p, _)| p.to_string());
        let unfinished = args.ends_with("<unfinished ...>");
        let (args_part, result) =
            if unfinished { (args.trim_end_matches(" <unfinished ...>"), None) } else { split_result(args) };
        let span = (name == "pwrite64").then(|| {
            let mut parts = args_part.rsplitn(3, ", ");
            let offset = parts.next().and_then(|p| p.trim().parse().ok());
            let count = parts.next().and_then(|p| p.trim().parse().ok());
            count.zip(offset)
        });
        let text = (name == "write" && args.starts_with("1<"))
            .then(|| {
                args.split_once('"').and_then(|(_, t)| t.split_once("\\n\"")).map(|(t, _)| t.to_string())
            })
            .flatten();
        calls.push(Call {
            name: name.to_string(),
            path,
            span: span.flatten(),
            text,
            begin: line_no,
            end: line_no,
            result,
        });
        if unfinished {
            pending.insert(pid.to_string(), calls.len() - 1);
        }
    }
    calls
}

#[test]
fn every_acknowledged_append_follows_an_fdatasync_of_its_segment() {
    let strace_found = std::process::Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !strace_found {
        println!("SKIPPED: strace is not on PATH (apt-get install -y strace); the sync proof did not run");
        return;
    }
    let tmp = TempDir::new().expect("tempdir");
    let trace_path = tmp.path().join("trace.txt");
    let exe = std::env::current_exe().expect("test binary");
    let output = std::process::Command::new("strace")
        .args(["-f", "-y", "-s", "512", "-e", "trace=fsync,fdatasync,sync_file_range,write,pwrite64", "-o"])
        .arg(&trace_path)
        .arg(exe)
        .args(["strace_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, tmp.path().join("data"))
        .output()
        .expect("run the child under strace");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("DONE"),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let trace = std::fs::read_to_string(&trace_path).expect("trace");
    let calls = parse(&trace);

    let syncs: Vec<&Call> = calls
        .iter()
        .filter(|c| c.name == "fdatasync" || c.name == "fsync")
        .filter(|c| c.result == Some(0))
        .collect();
    let writes: Vec<&Call> = calls.iter().filter(|c| c.name == "pwrite64").collect();
    let mut acked = 0;
    for ack in calls.iter().filter(|c| c.text.as_deref().is_some_and(|t| t.starts_with("ACK "))) {
        let text = ack.text.as_deref().expect("text");
        let words: Vec<&str> = text.split_whitespace().collect();
        let (index, path, offset) = (words[1], words[2], words[3].parse::<u64>().expect("offset"));
        // The write that put the entry's record into its segment...
        let write = writes
            .iter()
            .rfind(|w| {
                w.end < ack.begin
                    && w.path.as_deref() == Some(path)
                    && w.span.is_some_and(|(count, at)| at <= offset && offset < at + count)
            })
            .unwrap_or_else(|| panic!("entry {index}: no pwrite64 of {path} at {offset} before its ACK"));
        // ...then a sync of that file, begun after the write and finished before the ACK.
        let covered =
            syncs.iter().any(|s| s.path.as_deref() == Some(path) && s.begin > write.end && s.end < ack.begin);
        assert!(covered, "entry {index} in {path} was acknowledged without an fdatasync covering it");
        acked += 1;
    }
    assert_eq!(acked, APPENDS, "every append was acknowledged and checked");
    let count = |name: &str| calls.iter().filter(|c| c.name == name).count();
    let files: std::collections::BTreeSet<&str> = syncs.iter().filter_map(|s| s.path.as_deref()).collect();
    println!(
        "strace proof: {acked} acknowledged appends, each preceded by an fdatasync of its segment; \
         {} fdatasync, {} fsync, {} sync_file_range calls; {} files synced",
        count("fdatasync"),
        count("fsync"),
        count("sync_file_range"),
        files.len()
    );
    assert!(count("fdatasync") < APPENDS as usize, "pipelined appends shared syncs (group commit)");
}
