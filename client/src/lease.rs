//! Single-writer leases with fencing tokens, and [`LeaseGuard`].
//!
//! A lease gives one holder a key for a TTL; its fencing token strictly increases per key.
//! The store rejects writes that carry an older token ([`Error::FencingRejected`]), so a
//! holder that was paused past its TTL cannot overwrite its successor's data.
//!
//! # How the guard decides it still holds the lease
//!
//! [`LeaseGuard::is_valid`] is computed only on this process's monotonic clock: for each
//! successful acquire or renew, the guard takes `Instant::now()` *before* sending the
//! request (the first attempt, if the SDK retried) and holds the lease until
//! `sent_at + ttl - lease_skew_margin_ms`. The leader starts the TTL no earlier than it
//! received the request, which is after `sent_at`, so the guard gives the lease up before
//! the store could grant it to anyone else, provided the client's clock runs no slower than
//! the leader's by more than the margin over one TTL. Renewals happen every `ttl / 3`, or
//! more often when the margin leaves less than that: at least twice per `ttl - margin`.
//! Pauses (GC, SIGSTOP) do not break this: after a pause `is_valid` is false, and any write
//! the paused holder still sends is fenced by the store.

use std::time::{Duration, Instant};

use seam_proto::v1 as pb;
use seam_proto::v1::lease_client::LeaseClient;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{Client, Route};
use crate::error::{Effect, Error};
use crate::types::LeaseInfo;

/// Shortest renewal period, ms: a very short TTL still does not renew in a busy loop.
pub const RENEW_INTERVAL_MS_MIN: u64 = 10;

/// Leases on keys. Get one with [`Client::leases`].
#[derive(Debug, Clone)]
pub struct Leases {
    client: Client,
}

/// The leases a list call returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseList {
    /// Live leases.
    pub leases: Vec<LeaseInfo>,
    /// The state machine's clock the list was evaluated at, ms since the UNIX epoch.
    pub now_ms: u64,
}

impl Client {
    /// Lease operations.
    pub fn leases(&self) -> Leases {
        Leases { client: self.clone() }
    }
}

impl Leases {
    async fn call(
        &self,
        build: impl FnOnce(pb::RequestHeader) -> LeaseReq,
    ) -> Result<pb::LeaseResponse, Error> {
        let inner = &self.client.inner;
        let id = inner.next_request_id();
        let req = build(inner.header(id, None));
        let call = inner.call(Route::Leader, Effect::Write, id);
        match req {
            LeaseReq::Acquire(r) => {
                inner.invoke(call, r, |ch, r| async move { LeaseClient::new(ch).acquire(r).await }).await
            }
            LeaseReq::Renew(r) => {
                inner.invoke(call, r, |ch, r| async move { LeaseClient::new(ch).renew(r).await }).await
            }
            LeaseReq::Release(r) => {
                inner.invoke(call, r, |ch, r| async move { LeaseClient::new(ch).release(r).await }).await
            }
            LeaseReq::Transfer(r) => {
                inner.invoke(call, r, |ch, r| async move { LeaseClient::new(ch).transfer(r).await }).await
            }
        }
    }

    /// Acquires `key` for `holder` in `region` for `ttl`; returns the lease with its fencing
    /// token. The same holder asking again gets its live lease back. Fails with
    /// [`Error::LeaseHeld`] while another holder's lease is live.
    pub async fn acquire(
        &self,
        key: impl AsRef<[u8]>,
        holder: &str,
        region: &str,
        ttl: Duration,
    ) -> Result<LeaseInfo, Error> {
        let key = key.as_ref().to_vec();
        let resp = self
            .call(|header| {
                LeaseReq::Acquire(pb::AcquireRequest {
                    header: Some(header),
                    key,
                    holder: holder.to_string(),
                    region: region.to_string(),
                    ttl_ms: ttl.as_millis() as u64,
                })
            })
            .await?;
        lease_of(resp)
    }

    /// Extends the lease behind `token` by its TTL.
    pub async fn renew(&self, key: impl AsRef<[u8]>, token: u64) -> Result<LeaseInfo, Error> {
        let key = key.as_ref().to_vec();
        let resp = self
            .call(|header| LeaseReq::Renew(pb::RenewRequest { header: Some(header), key, token }))
            .await?;
        lease_of(resp)
    }

    /// Gives the lease up.
    pub async fn release(&self, key: impl AsRef<[u8]>, token: u64) -> Result<(), Error> {
        let key = key.as_ref().to_vec();
        self.call(|header| LeaseReq::Release(pb::ReleaseRequest { header: Some(header), key, token }))
            .await?;
        Ok(())
    }

    /// Hands the lease to `new_holder` in `new_region` (a planned move); returns the new
    /// lease, whose token is larger.
    pub async fn transfer(
        &self,
        key: impl AsRef<[u8]>,
        token: u64,
        new_holder: &str,
        new_region: &str,
    ) -> Result<LeaseInfo, Error> {
        let key = key.as_ref().to_vec();
        let resp = self
            .call(|header| {
                LeaseReq::Transfer(pb::TransferRequest {
                    header: Some(header),
                    key,
                    token,
                    new_holder: new_holder.to_string(),
                    new_region: new_region.to_string(),
                })
            })
            .await?;
        lease_of(resp)
    }

    /// Lists live leases under `prefix`, optionally only those held in `region`, at most
    /// `limit` (0: the node's maximum).
    pub async fn list(
        &self,
        prefix: impl AsRef<[u8]>,
        region: Option<&str>,
        limit: u32,
    ) -> Result<LeaseList, Error> {
        let inner = &self.client.inner;
        let id = inner.next_request_id();
        let req = pb::ListLeasesRequest {
            header: Some(inner.header(id, None)),
            prefix: prefix.as_ref().to_vec(),
            region: region.unwrap_or_default().to_string(),
            limit,
        };
        let call = inner.call(Route::Leader, Effect::Read, id);
        let resp = inner.invoke(call, req, |ch, r| async move { LeaseClient::new(ch).list(r).await }).await?;
        Ok(LeaseList { leases: resp.leases.into_iter().map(LeaseInfo::from).collect(), now_ms: resp.now_ms })
    }

    /// Acquires `key` for `holder` (in the client's region) and keeps it renewed in the
    /// background until the guard is dropped or the lease is lost.
    ///
    /// A token fences writes to its own key. To fence writes to other keys, guard them with
    /// a transaction that compares the lease's token ([`crate::Cmp::lease_token`]).
    ///
    /// ```no_run
    /// # async fn example(client: seam_client::Client) -> Result<(), seam_client::Error> {
    /// use std::time::Duration;
    /// use seam_client::{Cmp, CmpOp, Op, PutOptions, Txn};
    /// let guard = client.leases().guard("jobs/nightly", "worker-1", Duration::from_secs(10)).await?;
    /// tokio::select! {
    ///     lost = guard.lost() => eprintln!("lease lost: {lost:?}; stop working"),
    ///     _ = async {
    ///         // Writes to the leased key carry the token: refused if the lease moved on.
    ///         let opts = PutOptions { token: Some(guard.token()), ..Default::default() };
    ///         client.put_with("jobs/nightly", "running", opts).await?;
    ///         // Writes to other keys are made conditional on the lease's token.
    ///         let txn = Txn::new()
    ///             .when(Cmp::lease_token("jobs/nightly", CmpOp::Equal, guard.token()))
    ///             .and_then(Op::put("jobs/nightly/progress", "50%"));
    ///         let applied = client.txn(txn).await?.succeeded;
    ///         Ok::<bool, seam_client::Error>(applied)
    ///     } => {}
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn guard(
        &self,
        key: impl AsRef<[u8]>,
        holder: &str,
        ttl: Duration,
    ) -> Result<LeaseGuard, Error> {
        let margin = Duration::from_millis(self.client.inner.config.lease_skew_margin_ms);
        if ttl <= margin {
            return Err(Error::InvalidArgument {
                limit: "lease_skew_margin_ms".into(),
                max: margin.as_millis() as u64,
                message: format!(
                    "a lease of {} ms cannot be held: the skew margin is {} ms",
                    ttl.as_millis(),
                    margin.as_millis()
                ),
            });
        }
        let key = key.as_ref().to_vec();
        let region = self.client.inner.config.region.clone();
        let sent_at = Instant::now();
        let lease = self.acquire(&key, holder, &region, ttl).await?;
        let ttl = granted_ttl(&lease, ttl);
        let valid_until = sent_at + ttl.saturating_sub(margin);
        let (tx, rx) = watch::channel(GuardState::Held { valid_until });
        let task = tokio::spawn(renew_loop(self.clone(), key.clone(), lease.token, ttl, margin, sent_at, tx));
        Ok(LeaseGuard { leases: self.clone(), lease, state: rx, task: Some(task), released: false })
    }
}

enum LeaseReq {
    Acquire(pb::AcquireRequest),
    Renew(pb::RenewRequest),
    Release(pb::ReleaseRequest),
    Transfer(pb::TransferRequest),
}

fn lease_of(resp: pb::LeaseResponse) -> Result<LeaseInfo, Error> {
    resp.lease.map(LeaseInfo::from).ok_or_else(|| Error::Rejected {
        code: tonic::Code::Internal,
        message: "the node answered without a lease".into(),
    })
}

fn granted_ttl(lease: &LeaseInfo, asked: Duration) -> Duration {
    if lease.ttl_ms > 0 {
        Duration::from_millis(lease.ttl_ms)
    } else {
        asked
    }
}

/// Why a [`LeaseGuard`] no longer holds its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseLost {
    /// The store refused a renewal (expired, fenced, taken over).
    Rejected(Error),
    /// No renewal succeeded before the guard's local validity ran out.
    Expired,
    /// The guard was released.
    Released,
}

#[derive(Debug, Clone)]
enum GuardState {
    Held { valid_until: Instant },
    Lost(LeaseLost),
}

/// A held lease, renewed in the background, released (best effort) on drop.
///
/// Check [`is_valid`](Self::is_valid) before acting as the holder, pass
/// [`token`](Self::token) with every write, and await [`lost`](Self::lost) to hear at once
/// when the lease is gone.
#[derive(Debug)]
pub struct LeaseGuard {
    leases: Leases,
    lease: LeaseInfo,
    state: watch::Receiver<GuardState>,
    task: Option<JoinHandle<()>>,
    released: bool,
}

impl LeaseGuard {
    /// The fencing token: pass it with every write made under this lease.
    pub fn token(&self) -> u64 {
        self.lease.token
    }

    /// The key.
    pub fn key(&self) -> &[u8] {
        &self.lease.key
    }

    /// The lease as granted.
    pub fn info(&self) -> &LeaseInfo {
        &self.lease
    }

    /// The instant (this process's monotonic clock) until which the lease is surely held:
    /// `sent_at + ttl - lease_skew_margin_ms` of the last successful acquire or renew.
    /// `None` once lost.
    pub fn valid_until(&self) -> Option<Instant> {
        match &*self.state.borrow() {
            GuardState::Held { valid_until } => Some(*valid_until),
            GuardState::Lost(_) => None,
        }
    }

    /// True while the lease is surely held: not lost, and now < `valid_until`.
    pub fn is_valid(&self) -> bool {
        self.valid_until().is_some_and(|t| Instant::now() < t)
    }

    /// Completes when the lease is lost (at once if it already is) with the reason.
    pub async fn lost(&self) -> LeaseLost {
        let mut rx = self.state.clone();
        loop {
            let deadline = match &*rx.borrow_and_update() {
                GuardState::Lost(reason) => return reason.clone(),
                GuardState::Held { valid_until } => *valid_until,
            };
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The renew task is gone without saying why: it was stopped.
                        return match &*rx.borrow() {
                            GuardState::Lost(reason) => reason.clone(),
                            GuardState::Held { .. } => LeaseLost::Released,
                        };
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    // Local validity ran out before a renewal was confirmed.
                    if matches!(&*rx.borrow(), GuardState::Held { valid_until } if *valid_until <= Instant::now()) {
                        return LeaseLost::Expired;
                    }
                }
            }
        }
    }

    /// Stops renewing and releases the lease, reporting the outcome.
    pub async fn release(mut self) -> Result<(), Error> {
        self.stop();
        self.released = true;
        self.leases.release(&self.lease.key, self.lease.token).await
    }

    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.stop();
        if self.released || !self.is_valid() {
            return;
        }
        // Best effort: the lease expires by itself if this release never arrives.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let leases = self.leases.clone();
            let (key, token) = (self.lease.key.clone(), self.lease.token);
            runtime.spawn(async move {
                if let Err(e) = leases.release(&key, token).await {
                    tracing::debug!(error = %e, "seam client: releasing a dropped lease failed");
                }
            });
        }
    }
}

/// How often a guard renews: three times per ttl, and at least twice within the part of
/// the ttl it may count on (`ttl - margin`). Without the second bound, a ttl close to the
/// margin (700 ms with the default 500 ms margin) would reach the guard's own deadline
/// before its first renewal and be reported lost while perfectly healthy.
fn renew_interval(ttl: Duration, margin: Duration) -> Duration {
    (ttl / 3).min(ttl.saturating_sub(margin) / 2).max(Duration::from_millis(RENEW_INTERVAL_MS_MIN))
}

async fn renew_loop(
    leases: Leases,
    key: Vec<u8>,
    token: u64,
    mut ttl: Duration,
    margin: Duration,
    mut sent_at: Instant,
    state: watch::Sender<GuardState>,
) {
    let mut interval = renew_interval(ttl, margin);
    let mut valid_until = sent_at + ttl.saturating_sub(margin);
    let mut next = sent_at + interval;
    loop {
        tokio::time::sleep_until(next.into()).await;
        if Instant::now() >= valid_until {
            state.send_replace(GuardState::Lost(LeaseLost::Expired));
            return;
        }
        let attempt_at = Instant::now();
        match tokio::time::timeout_at(valid_until.into(), leases.renew(&key, token)).await {
            Err(_) => {
                state.send_replace(GuardState::Lost(LeaseLost::Expired));
                return;
            }
            // A renewal confirmed only after the old deadline (the process was paused while
            // it was in flight) comes too late: `lost()` may already have reported the
            // lease gone, and a lost lease stays lost.
            Ok(Ok(_)) if Instant::now() >= valid_until => {
                state.send_replace(GuardState::Lost(LeaseLost::Expired));
                return;
            }
            Ok(Ok(lease)) => {
                sent_at = attempt_at;
                ttl = granted_ttl(&lease, ttl);
                interval = renew_interval(ttl, margin);
                valid_until = sent_at + ttl.saturating_sub(margin);
                state.send_replace(GuardState::Held { valid_until });
                next = sent_at + interval;
            }
            Ok(Err(e)) if e.is_retryable() || e.is_indeterminate() => {
                // Not refused, not confirmed: keep the old deadline, try again soon.
                tracing::debug!(error = %e, "seam client: lease renewal failed; retrying");
                next = Instant::now() + interval / 2;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "seam client: lease renewal refused; lease lost");
                state.send_replace(GuardState::Lost(LeaseLost::Rejected(e)));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_fit_inside_the_part_of_the_ttl_the_guard_counts_on() {
        let ms = Duration::from_millis;
        // Plenty of room: every ttl / 3.
        assert_eq!(renew_interval(ms(30_000), ms(500)), ms(10_000));
        // A ttl close to the margin: twice within ttl - margin, not once per ttl / 3.
        assert_eq!(renew_interval(ms(700), ms(500)), ms(100));
        assert!(renew_interval(ms(700), ms(500)) * 2 <= ms(700) - ms(500));
        // Never a busy loop.
        assert_eq!(renew_interval(ms(510), ms(500)), ms(RENEW_INTERVAL_MS_MIN));
    }
}
