//! The state machine store: [`State`] in memory, persisted to sled, plus snapshots.
//!
//! The node reads the sacred tier from memory through a [`StateHandle`]; sled holds a copy
//! of every record so that a restart does not have to replay the whole log.
//!
//! Invariants:
//! - An `apply` call applies its entries to [`State`] under one write lock, so a reader sees
//!   the state before or after the whole batch, never in between.
//! - The records changed since the last take, including the applied log id, are taken from
//!   the state at an apply boundary (under the write lock) and go to sled in one atomic
//!   `sled::Batch`: sled never holds a result without its applied index or the other way
//!   round.
//! - Changes are taken at most every [`TAKE_CHANGES_EVERY_MS`] (by `apply`, or by a ticker
//!   task when no apply comes), or sooner once [`PENDING_CHANGES_MAX`] records wait: a
//!   client's results page or a hot key changed by many applies is encoded once per take,
//!   not once per apply (docs/benchmarks.md). Takes and their hand-off to the persister are
//!   serialized by one async mutex, which a snapshot install holds too, so the persister
//!   sees them in order and never after a replacement they predate.
//! - sled is not synced on apply, nor written inline: a persister thread (module `persist`)
//!   writes the taken change lists in order, merged under load. The log is the durable
//!   source: on restart openraft re-applies the committed entries after sled's applied log
//!   id, and applying is deterministic, so what sled lost is recomputed exactly.
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
use std::sync::Weak;
use std::time::Duration;
use std::time::Instant;

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
use crate::state::Change;
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

/// Applied changes wait in the state at most this long before they are taken for sled
/// (half the persister's merge window, so a busy node's takes still merge in pairs).
pub const TAKE_CHANGES_EVERY_MS: u64 = crate::persist::PERSIST_COALESCE_MS / 2;
/// Records waiting in the state at most before `apply` takes them early (bounds the memory
/// of what applies have changed but not yet handed to the persister).
pub const PENDING_CHANGES_MAX: usize = 65_536;

/// openraft's state machine storage for Seam.
#[derive(Debug)]
pub struct StateMachineStore {
    state: StateHandle,
    db: sled::Db,
    db_path: PathBuf,
    persister: Arc<Persister>,
    /// Held while changes are taken and handed to the persister (and across a snapshot
    /// install); holds when they were last taken.
    taken: Arc<tokio::sync::Mutex<Instant>>,
    /// Whether the ticker task that takes changes when no apply comes is running.
    ticking: bool,
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
            persister: Arc::new(persister),
            taken: Arc::new(tokio::sync::Mutex::new(Instant::now())),
            ticking: false,
            snapshots,
            _lock: lock,
        })
    }

    /// Starts the task that takes changes no apply has taken once they are
    /// [`TAKE_CHANGES_EVERY_MS`] old. It ends when the store is dropped.
    fn start_ticker(&mut self) {
        if self.ticking {
            return;
        }
        self.ticking = true;
        let (state, taken, persister) =
            (self.state.clone(), self.taken.clone(), Arc::downgrade(&self.persister));
        tokio::spawn(run_ticker(state, taken, persister));
    }

    /// A read handle on the applied state, for the node's reads.
    pub fn state(&self) -> StateHandle {
        self.state.clone()
    }

    /// Bytes sled uses on disk (for metrics and the footprint measurement).
    pub fn sled_size_on_disk(&self) -> std::io::Result<u64> {
        self.db.size_on_disk().map_err(std::io::Error::other)
    }

    /// The applied log id sled holds now: behind the state by the changes not yet taken
    /// and not yet written (at most about [`TAKE_CHANGES_EVERY_MS`] plus the persister's
    /// merge window while the node is healthy).
    pub fn persisted_applied(&self) -> std::io::Result<Option<LogId>> {
        let Some(bytes) = self.db.get(crate::state::record::META_APPLIED).map_err(std::io::Error::other)?
        else {
            return Ok(None);
        };
        crate::state::decode_applied(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Waits until every applied change is in sled, then flushes sled's buffers to its
    /// files. Not needed for correctness (see the module docs); useful before measuring or
    /// a clean shutdown, to shorten the next start.
    pub async fn flush(&self) -> std::io::Result<()> {
        let mut last = self.taken.lock().await;
        let changes = self.state.write().take_changes();
        hand_off(&mut last, changes, &self.persister).await.map_err(std::io::Error::other)?;
        drop(last);
        self.persister.barrier(true).await.map_err(std::io::Error::other)
    }
}

/// Hands changes just taken from the state to the persister and notes the time of the take.
/// The caller holds the `taken` mutex (`last`) from the take through this call, so takes
/// reach the persister in the order they were made.
async fn hand_off(last: &mut Instant, changes: Vec<Change>, persister: &Persister) -> Result<(), String> {
    *last = Instant::now();
    if changes.is_empty() {
        return Ok(());
    }
    persister.submit(changes).await
}

/// Takes the changes of applies that are [`TAKE_CHANGES_EVERY_MS`] old when no apply has
/// taken them, until the store (its persister) is dropped.
async fn run_ticker(state: StateHandle, taken: Arc<tokio::sync::Mutex<Instant>>, persister: Weak<Persister>) {
    let every = Duration::from_millis(TAKE_CHANGES_EVERY_MS);
    loop {
        tokio::time::sleep(every).await;
        let Some(persister) = persister.upgrade() else { return };
        let mut last = taken.lock().await;
        if last.elapsed() < every {
            continue;
        }
        let changes = state.write().take_changes();
        if let Err(e) = hand_off(&mut last, changes, &persister).await {
            // The next apply's hand-off fails the same way and stops the Raft node.
            tracing::error!(error = %e, "taking applied changes for sled");
            return;
        }
    }
}

impl Drop for StateMachineStore {
    fn drop(&mut self) {
        // What applies changed since the last take, so that a clean close leaves sled
        // complete (a crash does not need it: the log replays). Only while no take is being
        // handed over (the ticker's): a later take must never reach the persister first.
        let Ok(_taking) = self.taken.try_lock() else { return };
        let changes = self.state.write().take_changes();
        if !changes.is_empty() {
            if let Err(e) = self.persister.try_submit(changes) {
                tracing::warn!(error = %e, "closing the state machine: recent applies left to the log");
            }
        }
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
        self.start_ticker();
        let mut last = self.taken.lock().await;
        let (responses, changes) = {
            let mut state = self.state.write();
            let responses: Vec<Response> = entries.into_iter().map(|entry| state.apply(&entry)).collect();
            let due = last.elapsed() >= Duration::from_millis(TAKE_CHANGES_EVERY_MS)
                || state.pending_changes() >= PENDING_CHANGES_MAX;
            (responses, due.then(|| state.take_changes()))
        };
        if let Some(changes) = changes {
            hand_off(&mut last, changes, &self.persister).await.map_err(error::write_state_machine)?;
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
        // The old state's untaken changes go with it; no take may reach the persister
        // between the replacement of the state and that of sled.
        let mut last = self.taken.lock().await;
        *self.state.write() = state;
        *last = Instant::now();
        self.persister.replace(records).await.map_err(|e| {
            error::write_state_machine(format!("installing a snapshot into {}: {e}", self.db_path.display()))
        })?;
        drop(last);
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
