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
//! [`Client::offline_rejections`](crate::Client::offline_rejections). The retries are
//! bounded in time: a write still queued `offline_write_age_max_ms` after it was queued is
//! dropped and reported there too (as `Unavailable` if no attempt may have reached a node,
//! else `Indeterminate`), and so are those behind it that are as old. Sacred writes never
//! queue: they fail fast.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

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

/// A queued write dropped from the queue: the cluster refused it when it was finally sent
/// (definitely not applied); or, rarely, it was applied but stamped before the client's own
/// earlier write of the key even after re-sending (an indeterminate error saying so: the
/// earlier write wins); or it waited longer than `offline_write_age_max_ms` (`Unavailable`,
/// or `Indeterminate` if a drain attempt may have applied it).
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
    /// When it was queued: past `offline_write_age_max_ms` it is dropped.
    queued_at: Instant,
    /// Whether a drain attempt ended with an unknown outcome (it may have been applied).
    maybe_applied: bool,
}

impl Queued {
    pub(crate) fn new(request_id: u64, op: QueuedOp, require: Option<Tier>) -> Self {
        Queued { request_id, op, require, queued_at: Instant::now(), maybe_applied: false }
    }

    /// The error a write dropped for its age is reported with.
    fn expired(&self, waited: Duration, age_max: Duration) -> Error {
        let waited = format!(
            "queued for {} ms, past offline_write_age_max_ms = {}",
            waited.as_millis(),
            age_max.as_millis()
        );
        if self.maybe_applied {
            Error::Indeterminate { reason: format!("{waited}; a drain attempt may have applied it") }
        } else {
            Error::Unavailable { reason: format!("{waited}, without reaching the cluster") }
        }
    }
}

pub(crate) struct OfflineQueue {
    items: VecDeque<Queued>,
    bytes: usize,
    count_max: usize,
    bytes_max: usize,
    age_max: Duration,
    rejections: VecDeque<OfflineRejection>,
}

impl OfflineQueue {
    pub(crate) fn new(count_max: usize, bytes_max: usize, age_max: Duration) -> Self {
        OfflineQueue {
            items: VecDeque::new(),
            bytes: 0,
            count_max,
            bytes_max,
            age_max,
            rejections: VecDeque::new(),
        }
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
            self.pop_front();
        }
    }

    /// Removes the front item, keeping the byte count.
    fn pop_front(&mut self) -> Option<Queued> {
        let item = self.items.pop_front()?;
        self.bytes -= item.op.bytes();
        Some(item)
    }

    /// Notes that the front item, if it is still `request_id`, may have been applied.
    fn mark_maybe_applied(&mut self, request_id: u64) {
        if let Some(front) = self.items.front_mut().filter(|q| q.request_id == request_id) {
            front.maybe_applied = true;
        }
    }

    /// Removes the writes queued at least `age_max` before `now` (they are at the front:
    /// the queue is in queueing order), each with the error it is reported with.
    fn expire(&mut self, now: Instant) -> Vec<(Queued, Error)> {
        let mut expired = Vec::new();
        while let Some(front) = self.items.front() {
            let waited = now.saturating_duration_since(front.queued_at);
            if waited < self.age_max {
                break;
            }
            let error = front.expired(waited, self.age_max);
            if let Some(item) = self.pop_front() {
                expired.push((item, error));
            }
        }
        expired
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
    /// Not applied, or unsure (`maybe_applied`): keep it at the front and try again after a
    /// backoff.
    Keep { maybe_applied: bool },
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
                Drained::Keep { maybe_applied: e.is_indeterminate() }
            }
            Err(e) => Drained::Refused(e),
        }
    }

    /// Reports a write dropped from the queue and forgets its session entry, unless a later
    /// write of the key has replaced it (reads no longer see the dropped value).
    fn report_dropped(&self, item: &Queued, error: Error) {
        tracing::warn!(request_id = item.request_id, error = %error, "seam client: queued relaxed write dropped");
        lock(&self.offline).reject(OfflineRejection {
            key: item.op.key().to_vec(),
            request_id: item.request_id,
            error,
        });
        lock(&self.session).forget_write(item.op.key(), item.request_id);
    }
}

/// Drains the queue in order while the client lives. Holds only a `Weak` between steps, so
/// dropping the last `Client` ends it (queued writes still waiting are then dropped; call
/// `offline_queue_depth()` before shutting down to know). Each write is retried until it is
/// applied, refused, or `offline_write_age_max_ms` old.
pub(crate) fn spawn_drainer(inner: Weak<Inner>, wake: Arc<Notify>) {
    tokio::spawn(async move {
        let mut attempt: u32 = 0;
        loop {
            let (next, base_ms, max_ms) = match inner.upgrade() {
                None => return,
                Some(inner) => {
                    let expired = lock(&inner.offline).expire(Instant::now());
                    for (item, error) in expired {
                        inner.report_dropped(&item, error);
                    }
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
                    Drained::Keep { maybe_applied } => {
                        if maybe_applied {
                            lock(&inner.offline).mark_maybe_applied(item.request_id);
                        }
                        false
                    }
                    Drained::Refused(e) => {
                        lock(&inner.offline).pop(item.request_id);
                        inner.report_dropped(&item, e);
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
        Queued::new(
            id,
            QueuedOp::Put { key: b"k".to_vec(), value: vec![0; len], token: None, ttl_ms: None },
            None,
        )
    }

    #[test]
    fn writes_past_the_age_bound_are_dropped_front_first_with_their_outcome() {
        let age_max = Duration::from_secs(10);
        let mut q = OfflineQueue::new(10, 10_000, age_max);
        let start = Instant::now();
        for id in 1..=3 {
            let mut item = put(id, 100);
            item.queued_at = start + Duration::from_secs(id);
            q.push(item).expect("room");
        }
        q.mark_maybe_applied(1);
        q.mark_maybe_applied(2); // not the front: ignored
        assert!(q.expire(start + Duration::from_secs(10)).is_empty(), "none is 10 s old yet");
        let expired = q.expire(start + Duration::from_secs(12));
        let ids: Vec<u64> = expired.iter().map(|(item, _)| item.request_id).collect();
        assert_eq!(ids, vec![1, 2], "the two oldest, in order");
        assert!(
            matches!(&expired[0].1, Error::Indeterminate { reason } if reason.contains("may have applied"))
        );
        assert!(
            matches!(&expired[1].1, Error::Unavailable { reason } if reason.contains("offline_write_age_max_ms = 10000")),
            "{:?}",
            expired[1].1
        );
        assert_eq!((q.len(), q.bytes), (1, put(3, 100).op.bytes()), "the third stays, counted");
    }

    #[test]
    fn count_and_byte_bounds() {
        let age_max = Duration::from_secs(60);
        let mut q = OfflineQueue::new(2, 1_000, age_max);
        assert_eq!(q.push(put(1, 10)), Ok(1));
        assert_eq!(q.push(put(2, 10)), Ok(2));
        assert!(matches!(q.push(put(3, 10)), Err(Error::Backpressure { max: 2, .. })));
        let mut q = OfflineQueue::new(10, 200, age_max);
        assert!(q.push(put(1, 100)).is_ok());
        assert!(matches!(q.push(put(2, 100)), Err(Error::Backpressure { max: 200, .. })));
        q.pop(1);
        assert_eq!(q.bytes, 0);
        assert!(q.push(put(2, 100)).is_ok());
    }
}
