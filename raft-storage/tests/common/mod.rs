//! Helpers shared by the integration tests: entries, configs, directory fingerprints.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;

use openraft::testing::log_id;
use openraft::EntryPayload;
use openraft::Membership;
use seam_raft_storage::*;

pub const CLUSTER: &str = "test-cluster";

/// A config for node 1 of the test cluster with small segments, so tests rotate.
pub fn config() -> StorageConfig {
    StorageConfig { segment_bytes_max: 16 * 1024, ..StorageConfig::new(CLUSTER, 1) }
}

/// The entry at `index` of the test log: a put of `k<index>` in `term`.
pub fn put(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(Request {
            stamp_ms: 1_000 + index,
            idempotency: None,
            command: Command::Put { key: key(index), value: value(term, index), token: None },
        }),
    }
}

pub fn key(index: u64) -> Vec<u8> {
    format!("k{index:08}").into_bytes()
}

pub fn value(term: u64, index: u64) -> Vec<u8> {
    format!("value of entry {index} in term {term}").into_bytes()
}

/// A membership entry with voters {1, 2, 3}.
pub fn membership(term: u64, index: u64) -> Entry {
    let voters: BTreeSet<u64> = [1, 2, 3].into();
    let nodes: BTreeMap<u64, Node> = voters
        .iter()
        .map(|&id| (id, Node { addr: format!("127.0.0.1:{}", 7000 + id), region: "eu".into() }))
        .collect();
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
    }
}

/// Every file under `dir` with its content: equal fingerprints mean nothing was written.
pub fn fingerprint(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for item in std::fs::read_dir(&d).expect("read dir") {
            let path = item.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.strip_prefix(dir).expect("under dir").display().to_string();
                out.insert(name, std::fs::read(&path).expect("read file"));
            }
        }
    }
    out
}

/// Segment files in `<data>/log`, sorted.
pub fn segments(data: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data.join("log"))
        .expect("log dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}
