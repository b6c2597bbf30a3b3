//! Seam's Rust SDK.
//!
//! One [`Client`] talks to a Seam cluster: sacred keys (Raft, linearizable), relaxed keys
//! (a per-region eventually consistent cache with TTLs), single-writer leases with fencing
//! tokens, field policies, and cluster administration.
//!
//! ```no_run
//! use std::time::Duration;
//! use seam_client::{Client, ClientConfig, PutOptions};
//!
//! # async fn example() -> Result<(), seam_client::Error> {
//! let client = Client::connect(
//!     ClientConfig::new(["10.0.0.1:7001", "10.0.0.2:7001"]).with_region("eu-west"),
//! ).await?;
//! client.put("inventory/sku-42/count", "17").await?;          // sacred: through Raft
//! client.put("cart/alice", "3 items").await?;                 // relaxed if the field says so
//! let count = client.get("inventory/sku-42/count").await?;    // linearizable
//! println!("{:?} (served by {:?})", count.value(), count.meta.tier);
//!
//! let guard = client.leases().guard("jobs/nightly", "worker-1", Duration::from_secs(10)).await?;
//! let fenced = PutOptions { token: Some(guard.token()), ..Default::default() };
//! client.put_with("jobs/nightly/state", "running", fenced).await?;
//! # Ok(()) }
//! ```
//!
//! # Tiers are the cluster's business, not the caller's
//!
//! The same `get`, `put` and `delete` serve both tiers. The client keeps a cached copy of
//! the policy table (longest prefix wins; a key that matches no policy is sacred) and uses
//! it only to *route*: sacred operations go to the leader, relaxed ones to a node in the
//! client's region. The node serves by the real policy, so a stale cache costs at most one
//! hop; every response names the tier that served it ([`Meta::tier`]) and a surprise
//! triggers a refresh. A client made with [`Client::new`] loads the table (and the members)
//! before routing its first `get`, `put` or `delete`, so even a one-shot client (the CLI)
//! sends its first relaxed operation to its own region. A caller who must not be surprised pins `require`
//! ([`GetOptions::require`]) and gets [`Error::WrongTier`] naming the field instead.
//!
//! # Finding the leader
//!
//! Any endpoint will do. The client learns the members and the leader from `Cluster.Status`
//! and from every response header. A member's region is taken from the node itself (its
//! response headers, or its own `Cluster.Status`, asked at each refresh while unknown): the
//! membership has no region for members bootstrapped without `@REGION`. The client follows
//! `NotLeader` redirects (up to [`REDIRECTS_MAX`](config::REDIRECTS_MAX) per request
//! without spending a retry), and moves on to another node when one does not answer.
//!
//! # Outcomes, retries, idempotency
//!
//! Every call returns `Ok`, a *definite* error (certainly not applied) or an
//! *indeterminate* one (may have applied): see [`Error::outcome`] and [`Error::is_indeterminate`].
//! Each write carries `(client_id, request_id)`; request ids increase per client (starting
//! from the wall clock in microseconds so a restarted client with a fixed id keeps
//! increasing). A write is retried **only with the same request id**, so the node's dedup
//! table answers a retry with the original result instead of applying it twice; at most
//! `retries_max` retries, with exponential backoff whose jitter is a hash of the request id
//! and the attempt ([`backoff`]): reproducible, and different requests do not retry in
//! lockstep. Reads are retried on the same bounded schedule. A request that fails to
//! connect never left the client and is definite; a failure after it may have been sent is
//! indeterminate for a write; and once any attempt of a write was indeterminate, the final
//! error stays indeterminate unless the state machine itself decided (e.g.
//! [`Error::FencingRejected`]).
//!
//! # Relaxed fields: session consistency and the offline queue
//!
//! The client reads its own relaxed writes even when its next read lands on a node the
//! write has not reached: it remembers its last write per key with the write's HLC (at most
//! `session_keys_max` keys, oldest forgotten first) and never returns an older value than
//! that write ([`GetResult::from_session`] says when it answered from memory). Its writes of
//! one key also stay in the order it made them when consecutive ones land on different
//! nodes: a relaxed write stamped at or below the client's own earlier write of the key is
//! sent again (bounded; see `docs/sdk.md`).
//!
//! When no node is reachable, relaxed writes wait in a bounded, ordered offline queue
//! (`offline_queue_count_max`, `offline_queue_bytes_max`; past either,
//! [`Error::Backpressure`]) and drain in order on reconnect; [`Written::Queued`] tells the
//! caller, and [`Client::offline_queue_depth`] shows the depth. A write still queued after
//! `offline_write_age_max_ms` is dropped and reported by [`Client::offline_rejections`].
//! Sacred writes never queue.
//! A client that starts while the whole cluster is down knows no policies yet, so it treats
//! every key as sacred until its first refresh: nothing queues before then.
//!
//! # Leases
//!
//! [`LeaseGuard`] acquires a lease, renews it in the background, and judges validity on the
//! client's own monotonic clock from before each request was sent, minus
//! `lease_skew_margin_ms`, so it gives up the lease before the store could grant it to
//! another holder. A lost lease is reported at once through [`LeaseGuard::lost`]. See
//! [`lease`] for the argument.
//!
//! # Bounds
//!
//! Every queue, cache and loop is bounded by a [`ClientConfig`] field or a named constant:
//! [`MEMBERS_MAX`](client::MEMBERS_MAX), [`CHANNELS_MAX`](client::CHANNELS_MAX),
//! [`POLICIES_MAX`](client::POLICIES_MAX), [`OFFLINE_REJECTIONS_MAX`](offline::OFFLINE_REJECTIONS_MAX).

#![warn(missing_docs)]

// docs/sdk.md's example is compiled (not run) with the doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/sdk.md")]
pub struct SdkGuide;

pub mod admin;
pub mod backoff;
pub mod client;
pub mod config;
pub mod error;
pub mod kv;
pub mod lease;
pub mod offline;
pub mod policy;
mod session;
pub mod transport;
pub mod types;

pub use admin::{Admin, ClusterStatus, Membership, NodeReport};
pub use client::Client;
pub use config::ClientConfig;
pub use error::{outcome, Error, Outcome};
pub use kv::{
    CasResult, Cmp, CmpOp, DeleteOptions, GetOptions, GetResult, Op, OpResult, PutOptions, RangeOptions,
    RangePage, Txn, TxnResult, WriteInfo, Written,
};
pub use lease::{LeaseGuard, LeaseList, LeaseLost, Leases};
pub use offline::OfflineRejection;
pub use policy::Policies;
pub use types::{
    parse_staleness, Hlc, KeyValue, LeaseInfo, LeaseRule, Member, Meta, NodeStatus, Policy, PolicyChange,
    PolicyOutcome, Tier, STALENESS_COLD_MS, STALENESS_HOT_MS, STALENESS_WARM_MS,
};
