//! The offline queue for relaxed writes.
//!
//! When a relaxed write (by the cached policy) cannot reach any node (every attempt failed
//! to connect, so it certainly was not applied), it waits here, in order, and the call
//! returns [`Written::Queued`](crate::Written::Queued). While the queue is non-empty, new
//! relaxed writes queue behind it, so the cluster sees them in the order they were made.
//! The queue holds at most `offline_queue_count_max` writes and `offline_queue_bytes_max`
//! bytes; past either the call returns [`Error::Backpressure`] and nothing is queued.
//!
//! A background task drains the queue front to back, each write with its original request
//! id (so a drain attempt whose reply is lost is deduplicated on the retry), backing off
//! (deterministically, capped at `backoff_max_ms`) while the cluster stays unreachable. A
//! write the cluster refuses (a definite error) is dropped from the queue and reported in
//! [`Client::offline_rejections`](crate::Client::offline_rejections). Sacred writes never
//! queue: they fail fast.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use tokio::sync::Notify;

use crate::backoff::backoff;
use crate::client::{lock, Inner, Route};
use crate::error::Error;
use crate::kv::Sending;
use crate::types::{Hlc, Tier};

/// Bytes counted per queued write on top of its key and value (ids, options, bookkeeping).
pub const QUEUED_ENTRY_OVERHEAD_BYTES: usize = 64;

/// Refused queued writes remembered for [`Client::offline_rejections`](crate::Client::offline_rejections);
/// at the limit the oldest report is dropped.
pub const OFFLINE_REJECTIONS_MAX: usize = 64;

/// A queued write that the cluster refused when it was finally sent (definitely not
/// applied), or, rarely, that was applied but stamped before the client's own earlier write
/// of the key even after re-sending (an indeterminate error saying so: the earlier write
/// wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineRejection {
    /// The key written.
    pub key: Vec<u8>,
    /// The write's request id.
    pub request_id: u64,
    /// Why it was refused.
    pub error: Error,
}

#[derive(Debug, Clone)]
pub(crate) enum QueuedOp {
    Put { key: Vec<u8>, value: Vec<u8>, token: Option<u64>, ttl_ms: Option<u64> },
    Delete { key: Vec<u8>, token: Option<u64> },
}

impl QueuedOp {
    pub(crate) fn key(&self) -> &[u8] {
        match self {
            QueuedOp::Put { key, .. } | QueuedOp::Delete { key, .. } => key,
        }
    }

    fn bytes(&self) -> usize {
        QUEUED_ENTRY_OVERHEAD_BYTES
            + match self {
                QueuedOp::Put { key, value, .. } => key.len() + value.len(),
                QueuedOp::Delete { key, .. } => key.len(),
            }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Queued {
    pub(crate) request_id: u64,
    pub(crate) op: QueuedOp,
    /// The tier the caller pinned, if any.
    pub(crate) require: Option<Tier>,
}

pub(crate) struct OfflineQueue {
    items: VecDeque<Queued>,
    bytes: usize,
    count_max: usize,
    bytes_max: usize,
    rejections: VecDeque<OfflineRejection>,
}

impl OfflineQueue {
    pub(crate) fn new(count_max: usize, bytes_max: usize) -> Self {
        OfflineQueue { items: VecDeque::new(), bytes: 0, count_max, bytes_max, rejections: VecDeque::new() }
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Appends `item`, or refuses with `Backpressure` at either bound. Returns the depth.
    pub(crate) fn push(&mut self, item: Queued) -> Result<usize, Error> {
        if self.items.len() >= self.count_max {
            return Err(Error::Backpressure {
                queue: "offline_queue_count_max".into(),
                max: self.count_max as u64,
            });
        }
        let bytes = item.op.bytes();
        if self.bytes + bytes > self.bytes_max {
            return Err(Error::Backpressure {
                queue: "offline_queue_bytes_max".into(),
                max: self.bytes_max as u64,
            });
        }
        self.bytes += bytes;
        self.items.push_back(item);
        Ok(self.items.len())
    }

    fn front(&self) -> Option<Queued> {
        self.items.front().cloned()
    }

    /// Removes the front item if it is still `request_id`.
    fn pop(&mut self, request_id: u64) {
        if self.items.front().is_some_and(|q| q.request_id == request_id) {
            if let Some(item) = self.items.pop_front() {
                self.bytes -= item.op.bytes();
            }
        }
    }

    fn reject(&mut self, rejection: OfflineRejection) {
        if self.rejections.len() >= OFFLINE_REJECTIONS_MAX {
            self.rejections.pop_front();
        }
        self.rejections.push_back(rejection);
    }

    pub(crate) fn rejections(&self) -> Vec<OfflineRejection> {
        self.rejections.iter().cloned().collect()
    }
}

/// What sending the front of the queue came to.
enum Drained {
    /// Applied, with this timestamp (relaxed).
    Applied(Option<Hlc>),
    /// Not applied, or unsure: keep it at the front and try again after a backoff.
    Keep,
    /// Refused (definitely not applied), or applied out of order: drop and report it.
    Refused(Error),
}

impl Inner {
    /// Sends one queued write (bounded retries, same request id; ordered after the
    /// client's earlier writes of the key).
    async fn send_queued(&self, item: &Queued) -> Drained {
        match self.send_write(&item.op, item.request_id, item.require, Route::Local).await {
            Ok(Sending::Sent(sent)) => Drained::Applied(sent.hlc),
            Ok(Sending::OutOfOrder(e)) => Drained::Refused(e),
            Err(e)
                if e.is_retryable() || e.is_indeterminate() && !matches!(e, Error::DedupExpired { .. }) =>
            {
                Drained::Keep
            }
            Err(e) => Drained::Refused(e),
        }
    }
}

/// Drains the queue in order while the client lives. Holds only a `Weak` between steps, so
/// dropping the last `Client` ends it (queued writes still waiting are then dropped; call
/// `offline_queue_depth()` before shutting down to know).
pub(crate) fn spawn_drainer(inner: Weak<Inner>, wake: Arc<Notify>) {
    tokio::spawn(async move {
        let mut attempt: u32 = 0;
        loop {
            let (next, base_ms, max_ms) = match inner.upgrade() {
                None => return,
                Some(inner) => {
                    let front = lock(&inner.offline).front();
                    (front, inner.config.backoff_base_ms, inner.config.backoff_max_ms)
                }
            };
            let Some(item) = next else {
                attempt = 0;
                wake.notified().await;
                continue;
            };
            let done = match inner.upgrade() {
                None => return,
                Some(inner) => match inner.send_queued(&item).await {
                    Drained::Applied(hlc) => {
                        lock(&inner.offline).pop(item.request_id);
                        lock(&inner.session).applied(item.op.key(), item.request_id, hlc);
                        true
                    }
                    Drained::Keep => false,
                    Drained::Refused(e) => {
                        let mut queue = lock(&inner.offline);
                        queue.pop(item.request_id);
                        tracing::warn!(request_id = item.request_id, error = %e, "seam client: queued relaxed write refused");
                        queue.reject(OfflineRejection {
                            key: item.op.key().to_vec(),
                            request_id: item.request_id,
                            error: e,
                        });
                        lock(&inner.session).forget(item.op.key());
                        true
                    }
                },
            };
            if done {
                attempt = 0;
            } else {
                // Still unreachable (or unsure): back off, capped, then try the same write
                // again with the same request id.
                tokio::time::sleep(backoff(base_ms, max_ms, item.request_id, attempt)).await;
                attempt = attempt.saturating_add(1);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(id: u64, len: usize) -> Queued {
        Queued {
            request_id: id,
            op: QueuedOp::Put { key: b"k".to_vec(), value: vec![0; len], token: None, ttl_ms: None },
            require: None,
        }
    }

    #[test]
    fn count_and_byte_bounds() {
        let mut q = OfflineQueue::new(2, 1_000);
        assert_eq!(q.push(put(1, 10)), Ok(1));
        assert_eq!(q.push(put(2, 10)), Ok(2));
        assert!(matches!(q.push(put(3, 10)), Err(Error::Backpressure { max: 2, .. })));
        let mut q = OfflineQueue::new(10, 200);
        assert!(q.push(put(1, 100)).is_ok());
        assert!(matches!(q.push(put(2, 100)), Err(Error::Backpressure { max: 200, .. })));
        q.pop(1);
        assert_eq!(q.bytes, 0);
        assert!(q.push(put(2, 100)).is_ok());
    }
}
