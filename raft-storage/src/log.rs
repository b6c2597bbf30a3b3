//! openraft's log storage over the segmented log ([`crate::wal`]), with group commit.
//!
//! `append` writes the entries (one `write` per batch) and returns at once; the entries are
//! readable from then on. The `LogFlushed` callback goes to a dedicated flusher thread over
//! a bounded channel. The flusher takes everything queued, issues one `fdatasync` of the
//! active segment (and of an older one, if a rotation happened in between), and only then
//! completes all the callbacks it took: appends that arrive together share one sync, and no
//! append is acknowledged before a sync that covers it has returned.
//!
//! Votes and purges are synced before their call returns, through the same flusher, so
//! they share syncs with appends and stay ordered with them. Truncations are written but
//! not synced: they become durable with the next sync. The committed log id is not even
//! written by itself: it goes out with the next write (see [`Wal::save_committed`]). A lost
//! truncation only brings back entries the node had before (never acknowledged as
//! replaced), and a lost committed log id only lags (openraft learns it again).
//!
//! Invariants:
//! - Writes happen in call order, from the one task that owns the `LogStore` (openraft
//!   serializes log I/O), and a sync covers every write issued before it.
//! - Callbacks complete in the order of their appends.
//! - After a failed write or sync the store is poisoned: every later call and callback
//!   fails. A sync error is never retried (after a failed fsync, Linux may have dropped the
//!   dirty pages, so a later successful fsync proves nothing).
//! - A purge that would go past the durable snapshot while a snapshot install is under way
//!   waits for the install to be durable (see [`crate::snapshot::Coverage`]).

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::RwLock;
use std::thread::JoinHandle;
use std::time::Duration;

use openraft::storage::LogFlushed;
use openraft::storage::RaftLogStorage;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::watch;

use crate::config::StorageConfig;
use crate::dir::DirLock;
use crate::error;
use crate::snapshot::Coverage;
use crate::types::*;
use crate::wal;
use crate::wal::LogIndex;
use crate::wal::Record;
use crate::wal::Segment;
use crate::wal::Wal;

/// Called by the flusher once the write it follows is durable (or failed).
type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

struct FlushRequest {
    segment: Arc<Segment>,
    done: Done,
}

/// openraft's log storage for Seam: the Raft log and the vote.
pub struct LogStore {
    wal: Wal,
    reader: LogReader,
    flusher: Flusher,
    coverage: watch::Receiver<Coverage>,
    purge_wait: Duration,
    _lock: Arc<DirLock>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("active", &self.wal.active().path).finish_non_exhaustive()
    }
}

/// What the flusher has done since the store was opened (for metrics and benchmarks):
/// `completed / fdatasyncs` is how many writes each sync covered on average.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// `fdatasync` calls the flusher issued.
    pub fdatasyncs: u64,
    /// Callbacks it completed (appends, and the vote and purge syncs).
    pub completed: u64,
}

#[derive(Debug, Default)]
struct FlushCounters {
    fdatasyncs: AtomicU64,
    completed: AtomicU64,
}

/// A cheap clone of the log's reading side, for openraft's replication tasks.
#[derive(Clone, Debug)]
pub struct LogReader {
    index: Arc<RwLock<LogIndex>>,
}

impl LogStore {
    pub(crate) fn new(
        wal: Wal,
        config: &StorageConfig,
        coverage: watch::Receiver<Coverage>,
        lock: Arc<DirLock>,
    ) -> io::Result<Self> {
        let flusher = Flusher::start(config.flush_queue_max, wal.poisoned().clone())?;
        Ok(LogStore {
            reader: LogReader { index: wal.index().clone() },
            wal,
            flusher,
            coverage,
            purge_wait: Duration::from_millis(config.purge_wait_ms_max),
            _lock: lock,
        })
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, LogIndex> {
        // The index is updated only after the write it describes succeeded, and a panic
        // while holding the lock leaves it as it was before or after one record.
        self.wal.index().read().unwrap_or_else(|e| e.into_inner())
    }

    /// Like [`RaftLogStorage::append`], with a plain closure as the callback; `done` is
    /// called once the entries are durable (or the write failed). For tools, benchmarks and
    /// tests: openraft's `LogFlushed` cannot be built outside openraft.
    pub async fn append_notify<I>(
        &mut self,
        entries: I,
        done: impl FnOnce(io::Result<()>) + Send + 'static,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        let segment = self.wal.append(entries).map_err(error::write_logs)?;
        self.flusher.submit(segment, Box::new(done)).await
    }

    /// Waits until everything written so far is durable.
    async fn sync(&mut self, segment: Arc<Segment>) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        let done: Done = Box::new(move |result| {
            // The receiver is gone only if the caller was cancelled; nothing to tell then.
            let _ = tx.send(result);
        });
        self.flusher.submit(segment, done).await.map_err(io::Error::other)?;
        rx.await.map_err(|_| io::Error::other("the log flusher stopped"))?
    }

    /// Where entry `index` is stored: segment file and byte offset (a diagnostic for
    /// tooling and tests).
    pub fn entry_location(&self, index: u64) -> Option<(PathBuf, u64)> {
        self.index().loc(index).map(|(loc, segment)| (segment.path.clone(), loc.offset))
    }

    /// What the flusher has done so far.
    pub fn flush_stats(&self) -> FlushStats {
        let counters = &self.flusher.counters;
        FlushStats {
            fdatasyncs: counters.fdatasyncs.load(Ordering::Relaxed),
            completed: counters.completed.load(Ordering::Relaxed),
        }
    }

    /// Number of segment files the log uses now.
    pub fn segment_count(&self) -> usize {
        self.index().segment_count()
    }

    /// Waits, bounded, for a snapshot install to make `upto` durable before purging to it.
    async fn wait_for_coverage(&mut self, upto: LogId) -> Result<(), StorageError> {
        let deadline = tokio::time::Instant::now() + self.purge_wait;
        loop {
            let coverage = *self.coverage.borrow_and_update();
            if !coverage.installing || coverage.durable.is_some_and(|d| d.index >= upto.index) {
                return Ok(());
            }
            tracing::info!(%upto, durable = ?coverage.durable, "purge waits for the snapshot being installed");
            match tokio::time::timeout_at(deadline, self.coverage.changed()).await {
                Ok(Ok(())) => continue,
                // The state machine store is gone: nothing is being installed any more.
                Ok(Err(_)) => return Ok(()),
                Err(_) => {
                    return Err(error::write_logs(format!(
                        "purging the log to {upto} would drop entries no durable snapshot covers, and the \
                         snapshot install under way did not become durable within {} ms",
                        self.purge_wait.as_millis()
                    )))
                }
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        wal::read_entries(&self.index, start, end).map_err(error::read_logs)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.reader.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let index = self.index();
        Ok(LogState { last_purged_log_id: index.purged, last_log_id: index.last_log_id() })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let segment = self.wal.write_record(Record::Vote(*vote)).map_err(error::write_vote)?;
        self.sync(segment).await.map_err(error::write_vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.index().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.wal.save_committed(committed).map_err(error::write_logs)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.index().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.append_notify(entries, move |result| callback.log_io_completed(result)).await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let purged = self.index().purged;
        assert!(
            purged.is_none_or(|p| log_id.index > p.index),
            "truncating at {log_id} would cut into the purged log (purged up to {purged:?})"
        );
        self.wal.write_record(Record::Truncate { since: log_id.index }).map_err(error::write_logs)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let purged = self.index().purged;
        assert!(purged <= Some(log_id), "purge must not go backwards: to {log_id} after {purged:?}");
        self.wait_for_coverage(log_id).await?;
        let segment = self.wal.write_record(Record::Purge(log_id)).map_err(error::write_logs)?;
        self.sync(segment).await.map_err(error::write_logs)?;
        // Everything purged: move to a fresh segment so the whole log can be freed. The new
        // segment restates the vote and purge point; it is synced before the old one goes.
        if let Some(fresh) = self.wal.rotate_if_drained().map_err(error::write_logs)? {
            self.sync(fresh).await.map_err(error::write_logs)?;
        }
        let deleted = self.wal.remove_dead_segments().map_err(error::write_logs)?;
        tracing::debug!(upto = %log_id, deleted, "purged the log");
        Ok(())
    }
}

/// The group-commit thread and the bounded queue that feeds it.
struct Flusher {
    tx: Option<mpsc::Sender<FlushRequest>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<FlushCounters>,
}

impl Flusher {
    fn start(queue_max: usize, poisoned: Arc<AtomicBool>) -> io::Result<Flusher> {
        let (tx, rx) = mpsc::channel(queue_max);
        let counters = Arc::new(FlushCounters::default());
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name("seam-log-flusher".into())
            .spawn(move || run_flusher(rx, queue_max, poisoned, &thread_counters))?;
        Ok(Flusher { tx: Some(tx), thread: Some(thread), counters })
    }

    /// Queues `done` to run after the next sync of `segment`; waits for room in the queue
    /// when it is full.
    async fn submit(&self, segment: Arc<Segment>, done: Done) -> Result<(), StorageError> {
        let tx = self.tx.as_ref().expect("the flusher runs until the store is dropped");
        tx.send(FlushRequest { segment, done })
            .await
            .map_err(|_| error::write_logs("the log flusher stopped"))
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // Closing the queue lets the thread finish what is queued, then exit.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the log flusher thread panicked");
            }
        }
    }
}

/// The flusher loop: take everything queued (up to `batch_max`), one fdatasync per segment
/// involved (normally one), then complete the callbacks in order.
fn run_flusher(
    mut rx: mpsc::Receiver<FlushRequest>,
    batch_max: usize,
    poisoned: Arc<AtomicBool>,
    counters: &FlushCounters,
) {
    let mut batch: Vec<FlushRequest> = Vec::with_capacity(batch_max.min(1024));
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let result = sync_segments(&batch, &poisoned, counters);
        counters.completed.fetch_add(batch.len() as u64, Ordering::Relaxed);
        for request in batch.drain(..) {
            let result = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            (request.done)(result);
        }
    }
}

fn sync_segments(batch: &[FlushRequest], poisoned: &AtomicBool, counters: &FlushCounters) -> io::Result<()> {
    if poisoned.load(Ordering::Acquire) {
        return Err(io::Error::other("the Raft log failed an earlier write or sync; restart the node"));
    }
    let mut synced: Vec<u64> = Vec::new();
    for request in batch {
        let segment = &request.segment;
        if synced.contains(&segment.seq) {
            continue;
        }
        counters.fdatasyncs.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = segment.file.sync_data() {
            poisoned.store(true, Ordering::Release);
            return Err(io::Error::new(e.kind(), format!("fdatasync of {}: {e}", segment.path.display())));
        }
        synced.push(segment.seq);
    }
    Ok(())
}
