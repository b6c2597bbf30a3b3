//! Writing the state machine's changes to sled, off the apply path.
//!
//! sled 0.34 writes every batch with `pwrite` + `sync_file_range(WAIT_AFTER)`, which takes
//! a disk round trip. Done inline, it would hold openraft's apply (and a tokio worker) for
//! that long on every batch, and compete with the log's fdatasync on every entry. Since
//! sled is not the durable source (the log is; see [`crate::sm`]), the writes go to one
//! thread through a bounded queue instead:
//!
//! - Each queued item is the change list of one whole `apply` call (or a full replacement
//!   by a snapshot install). The thread merges everything queued into one `sled::Batch`, in
//!   order, so a batch always ends at an apply boundary and carries the applied log id of
//!   that boundary: sled still never holds a result without its applied index.
//! - The thread waits `PERSIST_COALESCE_MS` after the first change before writing, so under
//!   load many applies share one sled write (and repeated records, like the applied log id,
//!   are written once); idle, each apply costs one write, that much later.
//! - The queue holds at most `PERSIST_QUEUE_MAX` items; a full queue makes `apply` wait
//!   (backpressure), never drop.
//! - A sled error poisons the persister: every later `submit` fails, which is fatal to the
//!   Raft node (the state in memory is fine, but sled would silently fall behind).

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::thread::JoinHandle;

use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::state::Change;

/// Apply batches waiting for the persister at most; past it `apply` waits for room.
pub const PERSIST_QUEUE_MAX: usize = 1024;
/// Queued items merged into one sled batch at most (bounds the batch's memory).
pub const PERSIST_MERGE_MAX: usize = 1024;
/// After the first change arrives, the thread waits this long for more before writing, so
/// a busy node writes sled a few dozen times a second instead of once per apply. Each sled
/// batch costs a `sync_file_range` and wakes sled's IO threads: measured on a 2-core
/// machine, writing per apply took a third of a busy leader's CPU. A crash loses at most
/// this much more of sled's progress, which the log replays.
pub const PERSIST_COALESCE_MS: u64 = 50;

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

    /// Queues the changes of one apply call.
    pub(crate) async fn submit(&self, changes: Vec<Change>) -> Result<(), String> {
        self.sender()?.send(Item::Changes(changes)).await.map_err(|_| "the persister has stopped".to_string())
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
    let mut items = Vec::with_capacity(PERSIST_MERGE_MAX);
    while let Some(first) = rx.blocking_recv() {
        // A barrier is waited on: answer it without coalescing.
        if !matches!(first, Item::Barrier { .. }) {
            std::thread::sleep(std::time::Duration::from_millis(PERSIST_COALESCE_MS));
        }
        items.push(first);
        while items.len() < PERSIST_MERGE_MAX {
            match rx.try_recv() {
                Ok(item) => items.push(item),
                Err(_) => break,
            }
        }
        let mut batch = sled::Batch::default();
        let mut pending = false;
        let mut result: Result<(), String> = Ok(());
        for item in items.drain(..) {
            if failed.load(Ordering::Acquire) {
                result = Err("an earlier write of the state machine to sled failed".into());
            }
            match item {
                Item::Changes(changes) => {
                    for (key, value) in changes {
                        match value {
                            Some(value) => batch.insert(key, value),
                            None => batch.remove(key),
                        }
                    }
                    pending = true;
                }
                Item::Replace(records) => {
                    if pending {
                        result = result.and(write(&db, std::mem::take(&mut batch), failed, name));
                        pending = false;
                    }
                    result = result.and(replace_all(&db, &records).map_err(|e| fail(failed, name, e)));
                }
                Item::Barrier { flush, done } => {
                    if pending {
                        result = result.and(write(&db, std::mem::take(&mut batch), failed, name));
                        pending = false;
                    }
                    if flush && result.is_ok() {
                        result = db.flush().map(|_| ()).map_err(|e| fail(failed, name, e));
                    }
                    let _ = done.send(result.clone());
                }
            }
        }
        if pending {
            let _ = write(&db, batch, failed, name);
        }
    }
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
