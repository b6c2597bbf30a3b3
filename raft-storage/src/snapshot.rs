//! Snapshot files: the newest durable snapshot of the state machine.
//!
//! A snapshot's data (what openraft streams to followers) is `bincode(Vec<(key, value)>)`:
//! exactly [`crate::state::State::records`], which include the applied log id and the
//! membership. On disk it lives in `<data-dir>/snapshots/<term>-<index>.snap`:
//!
//! ```text
//! [8 bytes "SEAMSNP1"][u64 LE body length][u32 LE crc32 of body][body = bincode((SnapshotMeta, data))]
//! ```
//!
//! Invariants:
//! - A `.snap` file is complete and durable: it is written as `.tmp`, fdatasync'd, renamed
//!   into place, and the directory fsync'd. A `.tmp` file is a leftover of an interrupted
//!   write and is deleted on open.
//! - Only the newest snapshot is kept; older files are deleted after a newer one is durable.
//! - [`Coverage::durable`] is the last log id of the durable snapshot; the log store reads it
//!   before purging (see [`Coverage`]).

use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::dir::sync_dir;
use crate::error::StorageOpenError;
use crate::types::*;

const MAGIC: &[u8; 8] = b"SEAMSNP1";
const HEADER_BYTES: usize = 20;

/// What the log store may rely on when it purges.
///
/// openraft 0.9 installs a received snapshot by sending the install to the state-machine
/// task and, without waiting for it, purging the log up to the snapshot. Until the snapshot
/// is durable, a crash would leave a log purged past anything the state machine can rebuild.
/// So the state machine publishes whether an install is under way and how far the durable
/// snapshot reaches, and a purge past that point waits for the install (bounded by
/// `purge_wait_ms_max`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Coverage {
    /// Last log id of the durable snapshot.
    pub durable: Option<LogId>,
    /// A snapshot is being received or installed.
    pub installing: bool,
}

/// A snapshot as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredSnapshot {
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

/// The snapshot directory. Shared by the state machine and its snapshot builders; file
/// operations are serialized by the `current` lock.
#[derive(Debug)]
pub(crate) struct Snapshots {
    dir: PathBuf,
    /// Meta and path of the current (newest durable) snapshot.
    current: Mutex<Option<(SnapshotMeta, PathBuf)>>,
    coverage: watch::Sender<Coverage>,
}

/// The file name of a snapshot ending at `last`.
fn file_name(last: Option<LogId>) -> String {
    match last {
        Some(l) => format!("{}-{}.snap", l.leader_id.term, l.index),
        None => "empty.snap".into(),
    }
}

/// A snapshot id that names its log position; equal ids mean equal bytes, because applying
/// is deterministic.
pub(crate) fn snapshot_id(last: Option<LogId>) -> String {
    match last {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
        None => "empty".into(),
    }
}

fn encode_file(snapshot: &StoredSnapshot) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let body = bincode::serialize(&(&snapshot.meta, &snapshot.data))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&(body.len() as u64).to_le_bytes());
    header.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    Ok((header, body))
}

fn decode_file(bytes: &[u8]) -> Result<StoredSnapshot, String> {
    let (header, body) = bytes.split_at_checked(HEADER_BYTES).ok_or("shorter than its header")?;
    if &header[..8] != MAGIC {
        return Err("not a Seam snapshot (bad magic)".into());
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[8..16]);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&header[16..20]);
    if u64::from_le_bytes(len) != body.len() as u64 {
        return Err(format!("body is {} bytes, header says {}", body.len(), u64::from_le_bytes(len)));
    }
    if crc32fast::hash(body) != u32::from_le_bytes(crc) {
        return Err("checksum mismatch".into());
    }
    let (meta, data): (SnapshotMeta, Vec<u8>) =
        bincode::deserialize(body).map_err(|e| format!("passes its checksum but does not decode: {e}"))?;
    Ok(StoredSnapshot { meta, data })
}

/// State records: `(key, value)` in the layout of [`crate::state::record`].
pub(crate) type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// Decodes a snapshot's data into state records.
pub(crate) fn decode_records(data: &[u8]) -> Result<Records, String> {
    bincode::deserialize(data).map_err(|e| format!("snapshot data does not decode: {e}"))
}

/// Encodes state records as a snapshot's data.
pub(crate) fn encode_records(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    // Plain in-memory data always encodes; a failure is a bug.
    bincode::serialize(records).expect("bincode encodes state records")
}

impl Snapshots {
    /// Opens the directory and reads the newest snapshot in it. Writes nothing.
    pub fn open(dir: &Path) -> Result<(Snapshots, Option<StoredSnapshot>), StorageOpenError> {
        let mut newest: Option<(StoredSnapshot, PathBuf)> = None;
        for item in std::fs::read_dir(dir).map_err(|e| StorageOpenError::io(dir, e))? {
            let path = item.map_err(|e| StorageOpenError::io(dir, e))?.path();
            if path.extension().is_none_or(|e| e != "snap") {
                continue;
            }
            let bytes = read_file(&path).map_err(|e| StorageOpenError::io(&path, e))?;
            let snapshot = decode_file(&bytes)
                .map_err(|reason| StorageOpenError::CorruptSnapshot { path: path.clone(), reason })?;
            if newest.as_ref().is_none_or(|(n, _)| snapshot.meta.last_log_id > n.meta.last_log_id) {
                newest = Some((snapshot, path));
            }
        }
        let durable = newest.as_ref().and_then(|(s, _)| s.meta.last_log_id);
        let (coverage, _) = watch::channel(Coverage { durable, installing: false });
        let current = newest.as_ref().map(|(s, p)| (s.meta.clone(), p.clone()));
        let snapshots = Snapshots { dir: dir.to_path_buf(), current: Mutex::new(current), coverage };
        Ok((snapshots, newest.map(|(s, _)| s)))
    }

    /// A receiver of the coverage the log store checks before purging.
    pub fn coverage(&self) -> watch::Receiver<Coverage> {
        self.coverage.subscribe()
    }

    /// Marks a snapshot install as under way (or over).
    pub fn set_installing(&self, installing: bool) {
        self.coverage.send_modify(|c| c.installing = installing);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(SnapshotMeta, PathBuf)>> {
        // The guarded value is replaced only after the file is durable, so it is consistent
        // even if a holder panicked.
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `snapshot` the current snapshot, durably, and deletes the older one. Unless
    /// `replace_newer` (an install, which is authoritative), a snapshot older than the
    /// current one is not written and `false` is returned. Blocking: run it off the async
    /// runtime.
    pub fn persist(&self, snapshot: &StoredSnapshot, replace_newer: bool) -> io::Result<bool> {
        let mut current = self.lock();
        if !replace_newer && current.as_ref().is_some_and(|(m, _)| m.last_log_id > snapshot.meta.last_log_id)
        {
            return Ok(false);
        }
        let name = file_name(snapshot.meta.last_log_id);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let (header, body) = encode_file(snapshot)?;
        let mut file = OpenOptions::new().create(true).truncate(true).write(true).open(&tmp)?;
        file.write_all(&header)?;
        file.write_all(&body)?;
        file.sync_data()?;
        drop(file);
        std::fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)?;
        if let Some((_, old)) = current.replace((snapshot.meta.clone(), path.clone())) {
            if old != path {
                std::fs::remove_file(&old)?;
                sync_dir(&self.dir)?;
            }
        }
        let durable = snapshot.meta.last_log_id;
        self.coverage.send_modify(|c| c.durable = durable);
        Ok(true)
    }

    /// Reads the current snapshot. Blocking.
    pub fn read_current(&self) -> io::Result<Option<StoredSnapshot>> {
        let current = self.lock();
        let Some((_, path)) = current.as_ref() else { return Ok(None) };
        let bytes = read_file(path)?;
        let snapshot = decode_file(&bytes).map_err(|reason| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("corrupt snapshot {}: {reason}", path.display()),
            )
        })?;
        Ok(Some(snapshot))
    }

    /// Deletes leftovers: `.tmp` files of interrupted writes, and snapshots older than the
    /// current one (a crash between a rename and the delete leaves one).
    pub fn remove_stale(&self) -> io::Result<()> {
        let current = self.lock();
        let keep = current.as_ref().map(|(_, p)| p.clone());
        let mut removed = false;
        for item in std::fs::read_dir(&self.dir)? {
            let path = item?.path();
            let stale = match path.extension().and_then(|e| e.to_str()) {
                Some("tmp") => true,
                Some("snap") => Some(&path) != keep.as_ref(),
                _ => false,
            };
            if stale {
                tracing::info!(file = %path.display(), "removing a stale snapshot file");
                std::fs::remove_file(&path)?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;
    use tempfile::TempDir;

    use super::*;

    fn snapshot(index: u64) -> StoredSnapshot {
        let last = Some(log_id(2, 1, index));
        StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: last,
                last_membership: StoredMembership::default(),
                snapshot_id: snapshot_id(last),
            },
            data: encode_records(&[(b"k".to_vec(), vec![index as u8])]),
        }
    }

    #[test]
    fn keeps_only_the_newest_and_survives_reopen() {
        let tmp = TempDir::new().expect("tempdir");
        let (snaps, current) = Snapshots::open(tmp.path()).expect("open");
        assert!(current.is_none());
        assert!(snaps.persist(&snapshot(5), false).expect("persist"));
        assert!(snaps.persist(&snapshot(9), false).expect("persist"));
        assert!(!snaps.persist(&snapshot(7), false).expect("persist"), "an older build is not kept");
        assert_eq!(snaps.coverage().borrow().durable, Some(log_id(2, 1, 9)));
        let files: Vec<_> =
            std::fs::read_dir(tmp.path()).expect("ls").map(|e| e.expect("e").file_name()).collect();
        assert_eq!(files, vec!["2-9.snap"]);
        drop(snaps);
        let (_, current) = Snapshots::open(tmp.path()).expect("reopen");
        assert_eq!(current, Some(snapshot(9)));
    }

    #[test]
    fn a_damaged_file_is_refused_and_left_alone() {
        let tmp = TempDir::new().expect("tempdir");
        let (snaps, _) = Snapshots::open(tmp.path()).expect("open");
        snaps.persist(&snapshot(5), false).expect("persist");
        let path = tmp.path().join("2-5.snap");
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let err = Snapshots::open(tmp.path()).expect_err("corrupt");
        assert!(err.to_string().contains("2-5.snap") && err.to_string().contains("checksum"), "{err}");
        assert_eq!(std::fs::read(&path).expect("read"), bytes, "untouched");
    }
}
