//! The data directory: whose it is, who holds it, and how it is opened.
//!
//! ```text
//! <data-dir>/
//!   IDENTITY        format version, cluster id, node id (text; written last at creation)
//!   LOCK            flock'd by the process that has the directory open
//!   log/            the Raft log and vote: <seq:020>.wal segments (see `wal`)
//!   sm/             sled: the applied state machine (see `sm`)
//!   snapshots/      <term>-<index>.snap: the newest durable snapshot (see `snapshot`)
//! ```
//!
//! Invariants:
//! - A directory is opened only if its `IDENTITY` names this cluster and node and this
//!   format. The identity is checked before anything is created or locked, so a foreign or
//!   corrupt directory is never written to.
//! - `IDENTITY` is written last when a directory is created, after the log's first segment:
//!   a directory with an identity always has a log, and a log directory that lost its
//!   segments is refused (starting with an empty log would forget the vote, and a node that
//!   forgets its vote can vote twice in one term).
//! - At most one process has a directory open: it holds an exclusive `flock` on `LOCK`
//!   for as long as either store lives.

use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::StorageConfig;
use crate::error::StorageOpenError;
use crate::log::LogStore;
use crate::sm::StateMachineStore;
use crate::snapshot::Snapshots;
use crate::wal;
use crate::wal::Wal;

/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 2;

const IDENTITY: &str = "IDENTITY";
const LOCK: &str = "LOCK";
pub(crate) const LOG_DIR: &str = "log";
pub(crate) const SM_DIR: &str = "sm";
pub(crate) const SNAPSHOT_DIR: &str = "snapshots";

/// Opens (creating on first use) the data directory `dir` for the node described by
/// `config`, and returns its Raft log and state machine, ready to hand to
/// `openraft::Raft::new`.
///
/// Refuses, with a [`StorageOpenError`] that names the problem, a directory of another
/// cluster or node, one held by another process, and one whose identity, log, state machine
/// or snapshot is damaged; in those cases nothing in the directory is changed. The only
/// repair it makes is dropping a torn record at the end of the log (what a crash leaves of
/// an unacknowledged write).
pub fn open(
    dir: impl AsRef<Path>,
    config: StorageConfig,
) -> Result<(LogStore, StateMachineStore), StorageOpenError> {
    config.validate()?;
    crate::negative_control::check_env().map_err(StorageOpenError::InvalidConfig)?;
    let dir = dir.as_ref();
    if !check_identity(dir, &config)? {
        std::fs::create_dir_all(dir).map_err(|e| StorageOpenError::io(dir, e))?;
    }
    let lock = DirLock::acquire(dir)?;
    // Checked again under the lock: another process may have created it meanwhile.
    if !check_identity(dir, &config)? {
        initialize(dir, &config)?;
    }

    let log_dir = dir.join(LOG_DIR);
    if !log_dir.is_dir() {
        return Err(StorageOpenError::CorruptLog {
            path: log_dir,
            offset: 0,
            reason: "the log directory is missing; refusing to start without the vote and log".into(),
        });
    }
    let scanned = wal::scan(&log_dir)?;
    if scanned.index().segment_count() == 0 {
        return Err(StorageOpenError::CorruptLog {
            path: log_dir,
            offset: 0,
            reason: "the log has no segments; refusing to start without the vote and log".into(),
        });
    }

    let snapshot_dir = dir.join(SNAPSHOT_DIR);
    std::fs::create_dir_all(&snapshot_dir).map_err(|e| StorageOpenError::io(&snapshot_dir, e))?;
    let (snapshots, current) = Snapshots::open(&snapshot_dir)?;
    let snapshots = Arc::new(snapshots);
    let sm = StateMachineStore::open(&dir.join(SM_DIR), &config, snapshots.clone(), current, lock.clone())?;

    // purged <= applied: the state machine (after reinstalling the snapshot if sled was
    // behind it) must cover every entry the log no longer has, or the node could not
    // re-apply its way back to the committed state.
    let purged = scanned.index().purged;
    let applied = sm.state().read().applied();
    if purged > applied {
        return Err(StorageOpenError::Inconsistent {
            path: dir.to_path_buf(),
            reason: format!(
                "the log is purged up to {} but the state machine and snapshot only reach {}; the entries \
                 in between are lost locally. Remove this node's data directory and re-add the node so it \
                 receives a snapshot from the leader",
                display(purged),
                display(applied)
            ),
        });
    }

    let wal = Wal::open(scanned, config.segment_bytes_max)?;
    snapshots.remove_stale().map_err(|e| StorageOpenError::io(&snapshot_dir, e))?;
    let log =
        LogStore::new(wal, &config, snapshots.coverage(), lock).map_err(|e| StorageOpenError::io(dir, e))?;
    Ok((log, sm))
}

fn display(log_id: Option<crate::LogId>) -> String {
    log_id.map_or_else(|| "nothing".into(), |l| l.to_string())
}

/// Whether `dir` is an initialized data directory of this node. `Ok(false)`: it does not
/// exist, or is empty (but for a `LOCK` file). Every other case that is not this node's
/// directory is an error, reported without touching anything.
fn check_identity(dir: &Path, config: &StorageConfig) -> Result<bool, StorageOpenError> {
    if !dir.exists() {
        return Ok(false);
    }
    let path = dir.join(IDENTITY);
    let text = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            for item in std::fs::read_dir(dir).map_err(|e| StorageOpenError::io(dir, e))? {
                let name = item.map_err(|e| StorageOpenError::io(dir, e))?.file_name();
                if name != LOCK {
                    return Err(StorageOpenError::NotADataDir {
                        path: dir.to_path_buf(),
                        entry: name.to_string_lossy().into_owned(),
                    });
                }
            }
            return Ok(false);
        }
        Err(e) => return Err(StorageOpenError::io(&path, e)),
    };
    let identity =
        Identity::parse(&text).map_err(|reason| StorageOpenError::CorruptIdentity { path, reason })?;
    if identity.format != FORMAT_VERSION {
        return Err(StorageOpenError::UnsupportedFormat {
            path: dir.to_path_buf(),
            found: identity.format,
            supported: FORMAT_VERSION,
        });
    }
    if identity.cluster_id != config.cluster_id {
        return Err(StorageOpenError::ForeignCluster {
            path: dir.to_path_buf(),
            found: identity.cluster_id,
            expected: config.cluster_id.clone(),
        });
    }
    if identity.node_id != config.node_id {
        return Err(StorageOpenError::ForeignNode {
            path: dir.to_path_buf(),
            found: identity.node_id,
            expected: config.node_id,
        });
    }
    Ok(true)
}

/// Creates the layout of an empty directory; `IDENTITY` last.
fn initialize(dir: &Path, config: &StorageConfig) -> Result<(), StorageOpenError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e| StorageOpenError::io(&path, e)
    };
    let log_dir = dir.join(LOG_DIR);
    std::fs::create_dir(&log_dir).map_err(io_err(&log_dir))?;
    // Opening an empty log directory creates and syncs its first segment.
    drop(Wal::open(wal::scan(&log_dir)?, config.segment_bytes_max)?);
    for sub in [SM_DIR, SNAPSHOT_DIR] {
        std::fs::create_dir(dir.join(sub)).map_err(io_err(&dir.join(sub)))?;
    }
    sync_dir(dir).map_err(io_err(dir))?;
    let identity =
        Identity { format: FORMAT_VERSION, cluster_id: config.cluster_id.clone(), node_id: config.node_id };
    write_durably(dir, IDENTITY, identity.render().as_bytes()).map_err(io_err(&dir.join(IDENTITY)))?;
    tracing::info!(dir = %dir.display(), cluster = %config.cluster_id, node = config.node_id, "created data directory");
    Ok(())
}

/// The identity of a data directory, as written in its `IDENTITY` file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    format: u32,
    cluster_id: String,
    node_id: u64,
}

impl Identity {
    fn render(&self) -> String {
        format!(
            "# Seam data directory. A node refuses to open a directory whose identity differs from\n\
             # its configuration. Do not edit.\n\
             format = {}\ncluster_id = {}\nnode_id = {}\n",
            self.format, self.cluster_id, self.node_id
        )
    }

    fn parse(bytes: &[u8]) -> Result<Identity, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
        let (mut format, mut cluster_id, mut node_id) = (None, None, None);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!("line {}: expected `key = value`, found {line:?}", n + 1));
            };
            let (key, value) = (key.trim(), value.trim());
            let bad = |what: &str| format!("line {}: bad {what} {value:?}", n + 1);
            let slot_taken = match key {
                "format" => format.replace(value.parse::<u32>().map_err(|_| bad("format"))?).is_some(),
                "cluster_id" if !value.is_empty() => cluster_id.replace(value.to_string()).is_some(),
                "node_id" => node_id.replace(value.parse::<u64>().map_err(|_| bad("node_id"))?).is_some(),
                _ => return Err(format!("line {}: unexpected {line:?}", n + 1)),
            };
            if slot_taken {
                return Err(format!("line {}: {key} given twice", n + 1));
            }
        }
        Ok(Identity {
            format: format.ok_or("no format line")?,
            cluster_id: cluster_id.ok_or("no cluster_id line")?,
            node_id: node_id.ok_or("no node_id line")?,
        })
    }
}

/// An exclusive `flock` on `<data-dir>/LOCK`, released when the last store drops it.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    fn acquire(dir: &Path) -> Result<Arc<DirLock>, StorageOpenError> {
        let path = dir.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StorageOpenError::io(&path, e))?;
        match try_flock_exclusive(&file) {
            Ok(true) => Ok(Arc::new(DirLock { _file: file })),
            Ok(false) => Err(StorageOpenError::Locked { path: dir.to_path_buf() }),
            Err(err) => Err(StorageOpenError::io(&path, err)),
        }
    }
}

/// Takes an exclusive `flock` on `file` without blocking: `Ok(false)` when another open
/// file description holds it. Released when `file` is closed.
pub(crate) fn try_flock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Whether no store has `dir` open any more (its `LOCK` can be taken). A store is closed
/// when openraft's tasks drop it, which can be a moment after `Raft::shutdown` returns;
/// callers that reopen the directory at once (a restart in place) wait for this first.
pub fn is_released(dir: &Path) -> bool {
    match DirLock::acquire(dir) {
        Ok(lock) => {
            drop(lock);
            true
        }
        Err(_) => false,
    }
}

/// fsyncs a directory, making the creation, renaming and removal of its entries durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `dir/name` with `bytes` atomically and durably: write a temporary file,
/// fdatasync it, rename it over the target, fsync the directory.
pub(crate) fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp: PathBuf = dir.join(format!("{name}.tmp"));
    let mut file = OpenOptions::new().create(true).truncate(true).write(true).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trip_and_parse_errors() {
        let identity = Identity { format: 1, cluster_id: "prod-eu".into(), node_id: 7 };
        assert_eq!(Identity::parse(identity.render().as_bytes()), Ok(identity));
        let cases: [(&[u8], &str); 6] = [
            (b"format = 1\ncluster_id = a\n", "no node_id"),
            (b"format = 1\ncluster_id = a\nnode_id = x\n", "bad node_id"),
            (b"format = 1\nformat = 1\ncluster_id = a\nnode_id = 1\n", "given twice"),
            (b"format = 1\ncluster_id = a\nnode_id = 1\ncolour = red\n", "unexpected"),
            (b"\xff\xfe", "not UTF-8"),
            (b"garbage", "expected `key = value`"),
        ];
        for (text, want) in cases {
            let err = Identity::parse(text).expect_err(want);
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }
}
