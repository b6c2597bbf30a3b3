//! The state machine store: [`State`] in memory, persisted to sled, plus snapshots.
//!
//! The node reads the sacred tier from memory through a [`StateHandle`]; sled holds a copy
//! of every record so that a restart does not have to replay the whole log.
//!
//! Invariants:
//! - An `apply` call applies its entries to [`State`] under one write lock, so a reader sees
//!   the state before or after the whole batch, never in between.
//! - The records an apply call changed, including the applied log id, go to sled in one
//!   atomic `sled::Batch`: sled never holds a result without its applied index or the other
//!   way round.
//! - sled is not synced on apply, nor written inline: a persister thread (module `persist`)
//!   writes the change lists of whole apply calls in order, merged under load. The log is
//!   the durable source: on restart openraft re-applies the committed entries after sled's
//!   applied log id, and applying is deterministic, so what sled lost is recomputed exactly.
//! - purged <= snapshot <= applied. A built snapshot's file is durable before openraft
//!   learns of it, so before openraft purges the log up to it. A received snapshot's file is
//!   made durable first thing in `install_snapshot`, and a purge past it waits for that
//!   (openraft 0.9 issues that purge without waiting for the install; see `docs/storage.md`).
//!   If sled lost applies that the purged log can no longer replay, the snapshot covers
//!   them, and opening the directory reinstalls it.
//! - I/O failures are returned as [`StorageError`] (fatal to the Raft node) and the entries
//!   are never reported applied.
//!
//! The lock is a `std::sync::RwLock`, not tokio's: it is never held across an `.await`,
//! critical sections are short and CPU-bound, and readers (request handlers) take it from
//! both sync and async code. Building a snapshot clones the records under the read lock,
//! which stalls applies for that long (proportional to the state's size).

use std::io::Cursor;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::RwLockReadGuard;
use std::sync::RwLockWriteGuard;

use openraft::storage::RaftStateMachine;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::Snapshot;

use crate::config::StorageConfig;
use crate::dir::DirLock;
use crate::error;
use crate::error::StorageOpenError;
use crate::persist::replace_all;
use crate::persist::Persister;
use crate::snapshot::decode_records;
use crate::snapshot::encode_records;
use crate::snapshot::snapshot_id;
use crate::snapshot::Records;
use crate::snapshot::Snapshots;
use crate::snapshot::StoredSnapshot;
use crate::state::State;
use crate::types::*;

/// A cheap, cloneable read handle on the applied state, for the node's reads.
#[derive(Clone, Debug)]
pub struct StateHandle {
    state: Arc<RwLock<State>>,
}

impl StateHandle {
    /// Read access to the applied state. Hold the guard briefly: applies wait for it.
    ///
    /// Panics if an apply panicked (a bug in the state machine): the state may then be
    /// half-applied and must not be served.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().expect("the state machine panicked during an apply; its state cannot be trusted")
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().expect("the state machine panicked during an apply; its state cannot be trusted")
    }
}

/// openraft's state machine storage for Seam.
#[derive(Debug)]
pub struct StateMachineStore {
    state: StateHandle,
    db: sled::Db,
    db_path: PathBuf,
    persister: Persister,
    snapshots: Arc<Snapshots>,
    _lock: Arc<DirLock>,
}

/// Builds snapshots of the state at the time of the call.
#[derive(Debug)]
pub struct SnapshotBuilder {
    state: StateHandle,
    snapshots: Arc<Snapshots>,
}

fn sled_error(path: &Path, e: sled::Error) -> StorageOpenError {
    match e {
        sled::Error::Io(e) => StorageOpenError::io(path, e),
        e => StorageOpenError::CorruptStateMachine { path: path.to_path_buf(), reason: e.to_string() },
    }
}

/// Loads a state from snapshot data, checking it against the snapshot's meta.
fn load_snapshot(meta: &SnapshotMeta, data: &[u8]) -> Result<(State, Records), String> {
    let records = decode_records(data)?;
    let state = State::load(records.iter().cloned()).map_err(|e| e.to_string())?;
    if state.applied() != meta.last_log_id || *state.membership() != meta.last_membership {
        return Err(format!(
            "snapshot data is at {:?} with membership {:?}, but its meta says {:?} with {:?}",
            state.applied(),
            state.membership(),
            meta.last_log_id,
            meta.last_membership
        ));
    }
    Ok((state, records))
}

/// Longest wait, at open, for sled's own lock on its `db` file to be released.
pub const SLED_LOCK_WAIT_MS: u64 = 5_000;

/// Waits (at most [`SLED_LOCK_WAIT_MS`]) until nobody holds sled's `flock` on
/// `path/db`. The caller holds the data directory's lock, so a holder can only be this
/// process's previous store of the same directory: sled releases its lock when its last
/// internal handle (a flusher or I/O thread) drops, a moment after the store itself is
/// dropped, so a restart in place would otherwise fail with "could not acquire lock".
fn wait_for_sled_lock(path: &Path) -> Result<(), StorageOpenError> {
    let db_file = path.join("db");
    let file = match std::fs::File::open(&db_file) {
        Ok(file) => file,
        // A new state machine: nothing to wait for.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StorageOpenError::io(&db_file, e)),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(SLED_LOCK_WAIT_MS);
    loop {
        // Taken and released at once (closing `file` at the end releases it too).
        if crate::dir::try_flock_exclusive(&file).map_err(|e| StorageOpenError::io(&db_file, e))? {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            let held = format!("sled's lock on its db file was still held after {SLED_LOCK_WAIT_MS} ms");
            return Err(StorageOpenError::io(&db_file, std::io::Error::other(held)));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

impl StateMachineStore {
    /// Opens sled at `path` and loads the state. If the snapshot is newer than what sled
    /// holds, sled lost applies in a crash (it is flushed every `sm_flush_every_ms`, and
    /// its flush is not an fsync); the log may already be purged past them, so the state is
    /// reinstalled from the snapshot, and openraft re-applies the log from there.
    pub(crate) fn open(
        path: &Path,
        config: &StorageConfig,
        snapshots: Arc<Snapshots>,
        current: Option<StoredSnapshot>,
        lock: Arc<DirLock>,
    ) -> Result<Self, StorageOpenError> {
        wait_for_sled_lock(path)?;
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(config.sm_cache_bytes)
            .flush_every_ms(Some(config.sm_flush_every_ms))
            .open()
            .map_err(|e| sled_error(path, e))?;
        let records = db
            .iter()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sled_error(path, e))?;
        let mut state = State::load(records).map_err(|e| StorageOpenError::CorruptStateMachine {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if let Some(snapshot) = current {
            let meta = &snapshot.meta;
            if meta.last_log_id > state.applied() {
                let snap_path = path.with_file_name(crate::dir::SNAPSHOT_DIR);
                let (loaded, records) = load_snapshot(meta, &snapshot.data)
                    .map_err(|reason| StorageOpenError::CorruptSnapshot { path: snap_path, reason })?;
                tracing::warn!(
                    sled_applied = ?state.applied(),
                    snapshot = ?meta.last_log_id,
                    "sled is behind the snapshot (applies lost in a crash); reinstalling the snapshot"
                );
                replace_all(&db, &records).map_err(|e| sled_error(path, e))?;
                state = loaded;
            }
            assert!(meta.last_log_id <= state.applied(), "snapshot <= applied after open");
        }
        let persister = Persister::start(db.clone(), path.display().to_string())
            .map_err(|e| StorageOpenError::io(path, e))?;
        Ok(StateMachineStore {
            state: StateHandle { state: Arc::new(RwLock::new(state)) },
            db,
            db_path: path.to_path_buf(),
            persister,
            snapshots,
            _lock: lock,
        })
    }

    /// A read handle on the applied state, for the node's reads.
    pub fn state(&self) -> StateHandle {
        self.state.clone()
    }

    /// Bytes sled uses on disk (for metrics and the footprint measurement).
    pub fn sled_size_on_disk(&self) -> std::io::Result<u64> {
        self.db.size_on_disk().map_err(std::io::Error::other)
    }

    /// Waits until every applied change is in sled, then flushes sled's buffers to its
    /// files. Not needed for correctness (see the module docs); useful before measuring or
    /// a clean shutdown, to shorten the next start.
    pub async fn flush(&self) -> std::io::Result<()> {
        self.persister.barrier(true).await.map_err(std::io::Error::other)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = self.state.read();
        Ok((state.applied(), state.membership().clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let (responses, changes) = {
            let mut state = self.state.write();
            let responses: Vec<Response> = entries.into_iter().map(|entry| state.apply(&entry)).collect();
            (responses, state.take_changes())
        };
        if !changes.is_empty() {
            self.persister.submit(changes).await.map_err(error::write_state_machine)?;
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder { state: self.state.clone(), snapshots: self.snapshots.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        self.snapshots.set_installing(true);
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        self.snapshots.set_installing(true);
        let data = snapshot.into_inner();
        let (state, records) = load_snapshot(meta, &data).map_err(error::write_snapshot)?;
        // The file first: once it is durable the log may be purged up to it.
        let stored = StoredSnapshot { meta: meta.clone(), data };
        let snapshots = self.snapshots.clone();
        tokio::task::spawn_blocking(move || snapshots.persist(&stored, true))
            .await
            .map_err(error::write_snapshot)?
            .map_err(error::write_snapshot)?;
        *self.state.write() = state;
        self.persister.replace(records).await.map_err(|e| {
            error::write_state_machine(format!("installing a snapshot into {}: {e}", self.db_path.display()))
        })?;
        self.snapshots.set_installing(false);
        tracing::info!(snapshot = %meta, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let snapshots = self.snapshots.clone();
        let stored = tokio::task::spawn_blocking(move || snapshots.read_current())
            .await
            .map_err(error::read_snapshot)?
            .map_err(error::read_snapshot)?;
        Ok(stored.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (records, last_log_id, last_membership) = {
            let state = self.state.read();
            (state.records(), state.applied(), state.membership().clone())
        };
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id: snapshot_id(last_log_id) };
        let stored = StoredSnapshot { meta, data: encode_records(&records) };
        drop(records);
        let snapshots = self.snapshots.clone();
        let stored = tokio::task::spawn_blocking(move || snapshots.persist(&stored, false).map(|_| stored))
            .await
            .map_err(error::write_snapshot)?
            .map_err(error::write_snapshot)?;
        tracing::info!(snapshot = %stored.meta, bytes = stored.data.len(), "built snapshot");
        Ok(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) })
    }
}
