//! Writing the state machine's changes to sled, off the apply path.
//!
//! sled 0.34 writes every batch with `pwrite` + `sync_file_range(WAIT_AFTER)`, which takes
//! a disk round trip. Done inline, it would hold openraft's apply (and a tokio worker) for
//! that long on every batch, and compete with the log's fdatasync on every entry. Since
//! sled is not the durable source (the log is; see [`crate::sm`]), the writes go to one
//! thread through a bounded queue instead:
//!
//! - Each queued item is the change list taken from the state at one apply boundary (see
//!   [`crate::sm`]: the changes of all the applies since the previous take), or a full
//!   replacement by a snapshot install. The thread merges everything queued into one
//!   `sled::Batch`, in order, so a batch always ends at an apply boundary and carries the
//!   applied log id of that boundary: sled still never holds a result without its applied
//!   index.
//! - After the first change the thread keeps taking what is queued, for up to
//!   `PERSIST_COALESCE_MS` or `PERSIST_MERGE_MAX` items, then writes once: under load many
//!   applies share one sled write (and repeated records, like the applied log id or a hot
//!   key, are written once); idle, each apply costs one write, that much later. A barrier
//!   ends the window at once.
//! - The queue holds at most `PERSIST_QUEUE_MAX` items; a full queue makes `apply` wait
//!   (backpressure), never drop.
//! - A sled error poisons the persister: every later `submit` fails, which is fatal to the
//!   Raft node (the state in memory is fine, but sled would silently fall behind).

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::oneshot;

use crate::state::Change;

/// Apply batches waiting for the persister at most; past it `apply` waits for room.
pub const PERSIST_QUEUE_MAX: usize = 1024;
/// Queued items merged into one sled batch at most (bounds the batch's memory).
pub const PERSIST_MERGE_MAX: usize = 1024;
/// After the first change arrives, the thread merges what comes for this long before
/// writing, so a busy node writes sled a few times a second instead of once per apply. Each
/// sled batch costs a `sync_file_range` and wakes sled's IO threads (measured on a 2-core
/// machine, writing per apply took a third of a busy leader's CPU), and every record in it
/// costs a copy of a sled node, so a longer window, in which a hot key or a client's page
/// of dedup results is rewritten many times, writes fewer records (200 ms against 50 ms:
/// docs/benchmarks.md). A crash loses at most this much more of sled's progress, which the
/// log replays.
pub const PERSIST_COALESCE_MS: u64 = 200;
/// While merging, how long the thread sleeps when the queue is empty before looking again
/// (tokio's channel has no receive with a timeout for a plain thread).
const PERSIST_POLL_MS: u64 = 2;

enum Item {
    /// The changes of one apply call.
    Changes(Vec<Change>),
    /// Replace everything in sled with these records (a snapshot install).
    Replace(Vec<(Vec<u8>, Vec<u8>)>),
    /// Answer once everything queued before is written (and flush sled if asked).
    Barrier { flush: bool, done: oneshot::Sender<Result<(), String>> },
}

/// The persister thread and its queue.
#[derive(Debug)]
pub(crate) struct Persister {
    tx: Option<mpsc::Sender<Item>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    failed: Arc<AtomicBool>,
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Item::Changes(c) => write!(f, "Changes({})", c.len()),
            Item::Replace(r) => write!(f, "Replace({})", r.len()),
            Item::Barrier { flush, .. } => write!(f, "Barrier(flush={flush})"),
        }
    }
}

impl Persister {
    pub(crate) fn start(db: sled::Db, name: String) -> std::io::Result<Persister> {
        let (tx, rx) = mpsc::channel(PERSIST_QUEUE_MAX);
        let failed = Arc::new(AtomicBool::new(false));
        let thread_failed = failed.clone();
        let thread = std::thread::Builder::new()
            .name("seam-sm-persist".into())
            .spawn(move || run(db, rx, &thread_failed, &name))?;
        Ok(Persister { tx: Some(tx), thread: Mutex::new(Some(thread)), failed })
    }

    fn sender(&self) -> Result<&mpsc::Sender<Item>, String> {
        if self.failed.load(Ordering::Acquire) {
            return Err("an earlier write of the state machine to sled failed; restart the node".into());
        }
        self.tx.as_ref().ok_or_else(|| "the persister has stopped".to_string())
    }

    /// Queues the changes taken from the state at one apply boundary.
    pub(crate) async fn submit(&self, changes: Vec<Change>) -> Result<(), String> {
        self.sender()?.send(Item::Changes(changes)).await.map_err(|_| "the persister has stopped".to_string())
    }

    /// Queues changes without waiting, if the queue has room (for a store being dropped).
    pub(crate) fn try_submit(&self, changes: Vec<Change>) -> Result<(), String> {
        self.sender()?
            .try_send(Item::Changes(changes))
            .map_err(|e| format!("the persister did not take them: {e}"))
    }

    /// Queues a full replacement of sled's content.
    pub(crate) async fn replace(&self, records: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), String> {
        self.sender()?.send(Item::Replace(records)).await.map_err(|_| "the persister has stopped".to_string())
    }

    /// Waits until everything queued so far is in sled (and flushed to its files if asked).
    pub(crate) async fn barrier(&self, flush: bool) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.sender()?
            .send(Item::Barrier { flush, done })
            .await
            .map_err(|_| "the persister has stopped".to_string())?;
        rx.await.map_err(|_| "the persister has stopped".to_string())?
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        // Closing the queue lets the thread write what is queued, then exit.
        drop(self.tx.take());
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("the state machine persister panicked");
            }
        }
    }
}

fn run(db: sled::Db, mut rx: mpsc::Receiver<Item>, failed: &AtomicBool, name: &str) {
    while let Some(first) = rx.blocking_recv() {
        let deadline = Instant::now() + Duration::from_millis(PERSIST_COALESCE_MS);
        let mut batch = sled::Batch::default();
        let mut merged = 0;
        let mut next = Some(first);
        loop {
            let item = match next.take() {
                Some(item) => item,
                None if merged >= PERSIST_MERGE_MAX => break,
                None => match rx.try_recv() {
                    Ok(item) => item,
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        std::thread::sleep(left.min(Duration::from_millis(PERSIST_POLL_MS)));
                        continue;
                    }
                },
            };
            match item {
                Item::Changes(changes) => {
                    for (key, value) in changes {
                        match value {
                            Some(value) => batch.insert(key, value),
                            None => batch.remove(key),
                        }
                    }
                    merged += 1;
                }
                Item::Replace(records) => {
                    let mut result = write_pending(&db, &mut batch, &mut merged, failed, name);
                    if result.is_ok() {
                        result = replace_all(&db, &records).map_err(|e| fail(failed, name, e));
                    }
                    if result.is_err() {
                        break;
                    }
                }
                Item::Barrier { flush, done } => {
                    let mut result = write_pending(&db, &mut batch, &mut merged, failed, name);
                    if flush && result.is_ok() {
                        result = db.flush().map(|_| ()).map_err(|e| fail(failed, name, e));
                    }
                    let _ = done.send(result);
                    // Whoever waits on a barrier is waiting now: do not hold what follows.
                    break;
                }
            }
        }
        let _ = write_pending(&db, &mut batch, &mut merged, failed, name);
    }
}

/// Writes the merged batch, if anything was merged, and starts a new one. After a failure
/// (now or earlier) nothing more is written: the persister is poisoned.
fn write_pending(
    db: &sled::Db,
    batch: &mut sled::Batch,
    merged: &mut usize,
    failed: &AtomicBool,
    name: &str,
) -> Result<(), String> {
    if failed.load(Ordering::Acquire) {
        return Err("an earlier write of the state machine to sled failed".into());
    }
    if *merged == 0 {
        return Ok(());
    }
    *merged = 0;
    write(db, std::mem::take(batch), failed, name)
}

fn fail(failed: &AtomicBool, name: &str, e: sled::Error) -> String {
    failed.store(true, Ordering::Release);
    let message = format!("writing the state machine to {name}: {e}");
    tracing::error!("{message}");
    message
}

fn write(db: &sled::Db, batch: sled::Batch, failed: &AtomicBool, name: &str) -> Result<(), String> {
    db.apply_batch(batch).map_err(|e| fail(failed, name, e))
}

/// Replaces everything in sled with `records`, in one atomic batch.
pub(crate) fn replace_all(db: &sled::Db, records: &[(Vec<u8>, Vec<u8>)]) -> sled::Result<()> {
    let mut batch = sled::Batch::default();
    for key in db.iter().keys() {
        batch.remove(key?);
    }
    for (k, v) in records {
        batch.insert(k.as_slice(), v.as_slice());
    }
    db.apply_batch(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new().path(dir.path().join("sm")).temporary(true).open().expect("sled");
        (dir, db)
    }

    fn change(key: &str, value: Option<&str>) -> Change {
        (key.as_bytes().to_vec(), value.map(|v| v.as_bytes().to_vec()))
    }

    #[tokio::test]
    async fn merged_changes_land_in_order_and_a_barrier_sees_them() {
        let (_dir, db) = db();
        let persister = Persister::start(db.clone(), "test".into()).expect("start");
        persister.submit(vec![change("a", Some("1")), change("b", Some("1"))]).await.expect("submit");
        persister
            .submit(vec![change("a", Some("2")), change("b", None), change("c", Some("3"))])
            .await
            .expect("submit");
        persister.barrier(false).await.expect("barrier");
        let read = |k: &str| db.get(k).expect("get").map(|v| String::from_utf8_lossy(&v).into_owned());
        assert_eq!(read("a").as_deref(), Some("2"), "the later change wins");
        assert_eq!(read("b"), None, "a removal after an insert in the same window removes");
        assert_eq!(read("c").as_deref(), Some("3"));
        // A replacement after pending changes: the changes first, then the replacement.
        persister.submit(vec![change("d", Some("4"))]).await.expect("submit");
        persister.replace(vec![(b"z".to_vec(), b"9".to_vec())]).await.expect("replace");
        persister.barrier(true).await.expect("barrier");
        assert_eq!(db.iter().keys().count(), 1, "only the replacement is left");
        assert_eq!(read("z").as_deref(), Some("9"));
    }

    #[tokio::test]
    async fn dropping_the_persister_writes_what_is_queued() {
        let (_dir, db) = db();
        let persister = Persister::start(db.clone(), "test".into()).expect("start");
        persister.submit(vec![change("k", Some("v"))]).await.expect("submit");
        drop(persister);
        assert_eq!(db.get("k").expect("get").as_deref(), Some(&b"v"[..]));
    }
}
