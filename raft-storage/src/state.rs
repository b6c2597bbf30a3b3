//! The deterministic state machine of the sacred tier.
//!
//! [`State`] holds the sacred keys, leases, field policies and the dedup sessions in memory
//! and applies Raft entries to them. Applying is a pure function of (state, entry): no
//! clock, randomness, network or disk is consulted. Time comes from the leader's stamp in
//! each [`Request`]; the state's clock is the largest stamp applied so far, so it never
//! runs backwards across leader changes.
//!
//! Persistence is the caller's job ([`crate::sm`]): every mutation is also recorded as a
//! change to a flat record space (see [`record`] for the key layout), which the caller
//! writes to sled in one atomic batch together with the applied log id. [`State::load`]
//! rebuilds the state from those records, and a snapshot is exactly the list of records.
//!
//! Invariants:
//! - `applied` only grows; `sacred_bytes` equals the sum of key and value lengths in `kv`.
//! - A command either applies completely or is [`Response::Rejected`] and changes nothing
//!   but the dedup session that remembers the rejection.
//! - Fencing tokens are Raft indexes of grant entries, so they strictly increase per key.
//! - Every key's effective tier is changed from relaxed to sacred only by `PolicyPromote`
//!   (or `PolicyPromoteFrozen`), which writes the relaxed tier's converged values in the
//!   same entry.
//! - A relaxed key's period start (`FieldPolicy::relaxed_since_ms`, the timestamp of its
//!   frozen sacred seed) changes only when the key moves from sacred to relaxed.
//! - A frozen field (`PolicyFreeze`) keeps its policy and its keys until the freeze ends by
//!   `PolicyPromoteFrozen` or `PolicyUnfreeze` naming the same freeze revision.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::VecDeque;
use std::ops::Bound;

use openraft::EntryPayload;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;

use crate::types::*;

/// Keys larger than this are refused by the state machine itself (nodes enforce their own,
/// smaller, configured limit before proposing).
pub const KEY_BYTES_HARD_MAX: usize = 64 * 1024;
/// Values larger than this are refused by the state machine itself.
pub const VALUE_BYTES_HARD_MAX: usize = 16 * 1024 * 1024;
/// Operations per transaction branch the state machine accepts.
pub const TXN_OPS_HARD_MAX: usize = 4096;
/// Lease holder and region names longer than this are refused.
pub const NAME_BYTES_MAX: usize = 256;
/// Client ids longer than this are refused.
pub const CLIENT_ID_BYTES_MAX: usize = 256;
/// Shortest lease ttl granted: below it, a holder could not renew in time.
pub const LEASE_TTL_MS_MIN: u64 = 100;
/// Longest lease ttl granted (one day).
pub const LEASE_TTL_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// Regions the lease-expiry counters track by name; more are counted under `other`.
pub const EXPIRY_REGIONS_MAX: usize = 64;
/// Policy changes remembered by `policy history`; older ones are forgotten.
pub const POLICY_HISTORY_MAX: usize = 256;
/// Expired leases and dedup sessions reclaimed per applied entry. Reclamation is spread
/// over entries so one apply never stalls on a large backlog; what is left waits for the
/// next entry (an expired lease is never treated as live in the meantime).
pub const RECLAIM_PER_APPLY_MAX: usize = 64;

/// The record space the state persists into. One byte of kind, then the kind's key.
pub mod record {
    /// `k` + key -> [`crate::types::KeyValue`]
    pub const KV: u8 = b'k';
    /// `l` + key -> [`crate::types::Lease`]
    pub const LEASE: u8 = b'l';
    /// `p` + prefix -> [`crate::types::FieldPolicy`]
    pub const POLICY: u8 = b'p';
    /// `s` + client id -> session header
    pub const SESSION: u8 = b's';
    /// `r` + u16 BE client id length + client id + u64 BE page number -> the remembered
    /// results of that client whose request ids fall in the page, as `Vec<(u64, Response)>`
    /// in id order (see [`RESULTS_PER_PAGE`]). Never empty: an empty page is removed.
    pub const RESULTS: u8 = b'r';
    /// `m` + name -> metadata (applied log id, membership, clock, settings, policy history)
    pub const META: u8 = b'm';

    pub const META_APPLIED: &[u8] = b"mapplied";
    pub const META_MEMBERSHIP: &[u8] = b"mmembership";
    pub const META_NOW: &[u8] = b"mnow";
    pub const META_SETTINGS: &[u8] = b"msettings";
    pub const META_HISTORY: &[u8] = b"mhistory";

    pub fn key(kind: u8, rest: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(1 + rest.len());
        k.push(kind);
        k.extend_from_slice(rest);
        k
    }

    /// Request ids per results page: ids `p * RESULTS_PER_PAGE ..= (p + 1) * RESULTS_PER_PAGE - 1`
    /// share page `p`'s record. A client's sequential requests fill one page after
    /// another, so a busy client rewrites one or two records per persisted batch instead of
    /// writing one record per request and removing one per eviction: those two writes per
    /// put were most of sled's cost, and sled most of a busy node's CPU (docs/benchmarks.md).
    pub const RESULTS_PER_PAGE: u64 = 64;

    /// The page holding `request_id`'s result.
    pub fn results_page(request_id: u64) -> u64 {
        request_id / RESULTS_PER_PAGE
    }

    pub fn results_key(client_id: &str, page: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(11 + client_id.len());
        k.push(RESULTS);
        // Client ids are at most CLIENT_ID_BYTES_MAX bytes, checked before a session exists.
        k.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
        k.extend_from_slice(client_id.as_bytes());
        k.extend_from_slice(&page.to_be_bytes());
        k
    }
}

/// A record could not be decoded while loading: the data is corrupt or from another build.
#[derive(Debug, thiserror::Error)]
#[error("corrupt state record {key:?}: {reason}")]
pub struct CorruptRecord {
    pub key: String,
    pub reason: String,
}

/// One persisted change: set the record to `Some(bytes)` or remove it.
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// What the state remembers of a client, to answer its retries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SessionHeader {
    last_seen_ms: u64,
    /// Results with request ids at or below this were forgotten.
    evicted_below: u64,
}

#[derive(Clone, Debug, Default)]
struct Session {
    header: SessionHeader,
    /// Each remembered result as its bincode encoding, by request id: a results page is
    /// rewritten on every apply that adds to it, and copying encoded results costs far less
    /// than encoding up to [`record::RESULTS_PER_PAGE`] of them again each time (a retry,
    /// which decodes one, is rare).
    results: BTreeMap<u64, Vec<u8>>,
}

/// The sacred tier's replicated state.
#[derive(Debug, Default)]
pub struct State {
    applied: Option<LogId>,
    membership: StoredMembership,
    now_ms: u64,
    settings: Settings,
    kv: BTreeMap<Bytes, KeyValue>,
    sacred_bytes: u64,
    leases: BTreeMap<Bytes, Lease>,
    /// (expires_ms, key) of every lease in `leases`.
    lease_expiry: BTreeSet<(u64, Bytes)>,
    policies: BTreeMap<Bytes, FieldPolicy>,
    history: VecDeque<PolicyChange>,
    sessions: BTreeMap<String, Session>,
    /// (last_seen_ms, client id) of every session.
    session_lru: BTreeSet<(u64, String)>,
    /// Changes not yet taken by the persistence layer.
    changes: Vec<Change>,
    /// Sessions whose header record changed since the last `take_changes`, and results
    /// pages (client, page) likewise. Their records are encoded once, from the state as it
    /// is then, by `take_changes`: a client's many requests in one apply cost one record.
    /// Both hold only what one apply call touched, so the dedup limits bound them.
    dirty_sessions: BTreeSet<String>,
    dirty_pages: BTreeMap<String, BTreeSet<u64>>,
    /// Leases reclaimed on expiry since this process loaded the state, by region: an
    /// observation for metrics, not replicated state (never persisted).
    lease_expiries: BTreeMap<String, u64>,
    /// Whether the per-entry meta records (applied, membership, clock) changed since the
    /// last `take_changes`.
    meta_dirty: bool,
    /// Whether the settings or the policy history changed since the last `take_changes`
    /// (rarely: they are only rewritten then).
    config_dirty: bool,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding plain in-memory data into a Vec cannot fail; a failure is a bug.
    bincode::serialize(value).expect("bincode encodes in-memory state")
}

/// The applied log id as sled stores it (record [`record::META_APPLIED`]).
pub(crate) fn decode_applied(bytes: &[u8]) -> Result<Option<LogId>, CorruptRecord> {
    decode(record::META_APPLIED, bytes)
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, CorruptRecord> {
    bincode::deserialize(bytes)
        .map_err(|e| CorruptRecord { key: String::from_utf8_lossy(key).into_owned(), reason: e.to_string() })
}

fn field_name(prefix: &[u8]) -> String {
    String::from_utf8_lossy(prefix).into_owned()
}

impl State {
    /// An empty state: nothing applied, default settings.
    pub fn new() -> Self {
        State::default()
    }

    /// Rebuilds a state from its persisted records (from sled or from a snapshot).
    pub fn load<I>(records: I) -> Result<Self, CorruptRecord>
    where
        I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    {
        let mut state = State::new();
        for (key, value) in records {
            let Some((&kind, rest)) = key.split_first() else {
                return Err(CorruptRecord { key: String::new(), reason: "empty record key".into() });
            };
            match kind {
                record::KV => {
                    let kv: KeyValue = decode(&key, &value)?;
                    state.sacred_bytes += (kv.key.len() + kv.value.len()) as u64;
                    state.kv.insert(rest.to_vec(), kv);
                }
                record::LEASE => {
                    let lease: Lease = decode(&key, &value)?;
                    state.lease_expiry.insert((lease.expires_ms, rest.to_vec()));
                    state.leases.insert(rest.to_vec(), lease);
                }
                record::POLICY => {
                    let policy: FieldPolicy = decode(&key, &value)?;
                    state.policies.insert(rest.to_vec(), policy);
                }
                record::SESSION => {
                    let header: SessionHeader = decode(&key, &value)?;
                    let client = String::from_utf8(rest.to_vec())
                        .map_err(|e| CorruptRecord { key: field_name(&key), reason: e.to_string() })?;
                    state.session_lru.insert((header.last_seen_ms, client.clone()));
                    state.sessions.entry(client).or_default().header = header;
                }
                record::RESULTS => {
                    let (client, page) = parse_results_key(&key)?;
                    let results: Vec<(u64, Response)> = decode(&key, &value)?;
                    if results.is_empty() {
                        return Err(CorruptRecord {
                            key: field_name(&key),
                            reason: "empty results page".into(),
                        });
                    }
                    let session = state.sessions.entry(client).or_default();
                    for (request_id, response) in results {
                        if record::results_page(request_id) != page {
                            return Err(CorruptRecord {
                                key: field_name(&key),
                                reason: format!("request id {request_id} does not belong in page {page}"),
                            });
                        }
                        session.results.insert(request_id, encode(&response));
                    }
                }
                record::META => match key.as_slice() {
                    record::META_APPLIED => state.applied = decode_applied(&value)?,
                    record::META_MEMBERSHIP => state.membership = decode(&key, &value)?,
                    record::META_NOW => state.now_ms = decode(&key, &value)?,
                    record::META_SETTINGS => state.settings = decode(&key, &value)?,
                    record::META_HISTORY => state.history = decode(&key, &value)?,
                    _ => {
                        return Err(CorruptRecord {
                            key: field_name(&key),
                            reason: "unknown metadata record".into(),
                        })
                    }
                },
                _ => {
                    return Err(CorruptRecord {
                        key: field_name(&key),
                        reason: format!("unknown record kind {kind:#x}"),
                    })
                }
            }
        }
        // Results whose session header is missing would never be reclaimed.
        if let Some((client, _)) = state
            .sessions
            .iter()
            .find(|(c, s)| !state.session_lru.contains(&(s.header.last_seen_ms, (*c).clone())))
        {
            return Err(CorruptRecord {
                key: client.clone(),
                reason: "dedup results without a session header".into(),
            });
        }
        Ok(state)
    }

    /// Every record of the state, in key order: the content of a snapshot.
    pub fn records(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for (k, v) in &self.kv {
            out.push((record::key(record::KV, k), encode(v)));
        }
        for (k, v) in &self.leases {
            out.push((record::key(record::LEASE, k), encode(v)));
        }
        for (k, v) in &self.policies {
            out.push((record::key(record::POLICY, k), encode(v)));
        }
        for (client, session) in &self.sessions {
            out.push((record::key(record::SESSION, client.as_bytes()), encode(&session.header)));
            let mut pages: Vec<u64> = session.results.keys().map(|id| record::results_page(*id)).collect();
            pages.dedup();
            for page in pages {
                if let Some(value) = encode_page(session, page) {
                    out.push((record::results_key(client, page), value));
                }
            }
        }
        out.extend(self.meta_records());
        out.sort();
        out
    }

    /// The metadata written after every applied entry.
    fn entry_meta_records(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (record::META_APPLIED.to_vec(), encode(&self.applied)),
            (record::META_MEMBERSHIP.to_vec(), encode(&self.membership)),
            (record::META_NOW.to_vec(), encode(&self.now_ms)),
        ]
    }

    /// The metadata written only when it changes.
    fn config_meta_records(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (record::META_SETTINGS.to_vec(), encode(&self.settings)),
            (record::META_HISTORY.to_vec(), encode(&self.history)),
        ]
    }

    fn meta_records(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut records = self.entry_meta_records();
        records.extend(self.config_meta_records());
        records
    }

    /// The changes made since the last call, in order, ending with the metadata (applied
    /// log id and the rest) that changed. Writing them in one atomic batch keeps the
    /// persisted results and the applied index together.
    pub fn take_changes(&mut self) -> Vec<Change> {
        let mut changes = std::mem::take(&mut self.changes);
        for client in std::mem::take(&mut self.dirty_sessions) {
            let value = self.sessions.get(&client).map(|s| encode(&s.header));
            changes.push((record::key(record::SESSION, client.as_bytes()), value));
        }
        for (client, pages) in std::mem::take(&mut self.dirty_pages) {
            let session = self.sessions.get(&client);
            for page in pages {
                let value = session.and_then(|s| encode_page(s, page));
                changes.push((record::results_key(&client, page), value));
            }
        }
        if self.config_dirty {
            self.config_dirty = false;
            changes.extend(self.config_meta_records().into_iter().map(|(k, v)| (k, Some(v))));
        }
        if self.meta_dirty {
            self.meta_dirty = false;
            changes.extend(self.entry_meta_records().into_iter().map(|(k, v)| (k, Some(v))));
        }
        changes
    }

    /// Records `take_changes` would return now, roughly (0: nothing to persist). Bounds how
    /// many applies the store lets accumulate before it takes them.
    pub fn pending_changes(&self) -> usize {
        let meta = usize::from(self.meta_dirty) + usize::from(self.config_dirty);
        self.changes.len() + self.dirty_sessions.len() + self.dirty_pages.len() + meta
    }

    // ---- reads ---------------------------------------------------------------------------

    /// The last applied log id.
    pub fn applied(&self) -> Option<LogId> {
        self.applied
    }

    /// The last applied membership.
    pub fn membership(&self) -> &StoredMembership {
        &self.membership
    }

    /// The state machine's clock: the largest leader stamp applied, in ms.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The cluster-wide settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Bytes of keys and values held (what `sacred_bytes_max` limits).
    pub fn sacred_bytes(&self) -> u64 {
        self.sacred_bytes
    }

    /// Number of keys held.
    pub fn key_count(&self) -> usize {
        self.kv.len()
    }

    /// A key's current value and sequence numbers.
    pub fn get(&self, key: &[u8]) -> Option<&KeyValue> {
        self.kv.get(key)
    }

    /// Keys in `[start, end)` (`end = None`: to the last key), at most `limit`. Returns the
    /// page and whether more keys follow it.
    pub fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> (Vec<KeyValue>, bool) {
        let upper = match end {
            Some(end) => Bound::Excluded(end.to_vec()),
            None => Bound::Unbounded,
        };
        if matches!(&upper, Bound::Excluded(e) if e.as_slice() <= start) {
            return (Vec::new(), false);
        }
        let mut iter = self.kv.range::<Vec<u8>, _>((Bound::Included(start.to_vec()), upper)).map(|(_, v)| v);
        let page: Vec<KeyValue> = iter.by_ref().take(limit).cloned().collect();
        let more = iter.next().is_some();
        (page, more)
    }

    /// The live lease on `key` at state-machine time `now_ms`.
    pub fn lease(&self, key: &[u8], now_ms: u64) -> Option<&Lease> {
        self.leases.get(key).filter(|l| l.is_live(now_ms))
    }

    /// Live leases whose key starts with `prefix` and, if given, in `region`, at most `limit`.
    pub fn leases(&self, prefix: &[u8], region: Option<&str>, now_ms: u64, limit: usize) -> Vec<Lease> {
        self.leases
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, l)| l)
            .filter(|l| l.is_live(now_ms) && region.is_none_or(|r| l.region == r))
            .take(limit)
            .cloned()
            .collect()
    }

    /// The field (longest matching prefix) that governs `key`, if any.
    pub fn field(&self, key: &[u8]) -> Option<&FieldPolicy> {
        (0..=key.len()).rev().find_map(|n| self.policies.get(&key[..n]))
    }

    /// The policy that governs `key`: its field's, or sacred when it matches none.
    pub fn policy(&self, key: &[u8]) -> (Bytes, Policy) {
        match self.field(key) {
            Some(f) => (f.prefix.clone(), f.policy.clone()),
            None => (Vec::new(), Policy::DEFAULT),
        }
    }

    /// Every field with a policy, in prefix order.
    pub fn policies(&self) -> impl Iterator<Item = &FieldPolicy> {
        self.policies.values()
    }

    /// The remembered policy changes, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &PolicyChange> {
        self.history.iter()
    }

    /// Sacred values of the keys under `prefix` whose effective tier is relaxed: the frozen
    /// seed of a demoted field.
    pub fn relaxed_seed(&self, prefix: &[u8]) -> Vec<KeyValue> {
        self.kv
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| self.policy(k).1.tier == Tier::Relaxed)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Leases reclaimed on expiry since this state was loaded, by region (regions past
    /// [`EXPIRY_REGIONS_MAX`] are counted under `other`).
    pub fn lease_expiries(&self) -> &BTreeMap<String, u64> {
        &self.lease_expiries
    }

    fn count_expiry(&mut self, region: &str) {
        let region =
            if self.lease_expiries.contains_key(region) || self.lease_expiries.len() < EXPIRY_REGIONS_MAX {
                region
            } else {
                "other"
            };
        *self.lease_expiries.entry(region.to_string()).or_default() += 1;
    }

    /// The result remembered for a request, if any (a retry will be answered with it).
    pub fn remembered(&self, key: &IdempotencyKey) -> Option<Response> {
        self.sessions.get(&key.client_id)?.results.get(&key.request_id).map(|r| decode_result(r))
    }

    // ---- apply ---------------------------------------------------------------------------

    /// Applies one committed entry and returns its response.
    pub fn apply(&mut self, entry: &Entry) -> Response {
        let log_id = entry.log_id;
        if let Some(applied) = self.applied {
            assert!(
                log_id.index > applied.index,
                "applied index must advance: applying {log_id} after {applied}"
            );
        }
        let revision = log_id.index;
        let response = match &entry.payload {
            EntryPayload::Blank => Response::Done { revision },
            EntryPayload::Membership(m) => {
                self.membership = StoredMembership::new(Some(log_id), m.clone());
                Response::Done { revision }
            }
            EntryPayload::Normal(request) => self.apply_request(revision, request),
        };
        self.applied = Some(log_id);
        self.meta_dirty = true;
        response
    }

    fn apply_request(&mut self, revision: u64, request: &Request) -> Response {
        if let Command::Batch(requests) = &request.command {
            return Response::Batch(
                requests
                    .iter()
                    .map(|r| match r.command {
                        Command::Batch(_) => {
                            Response::Rejected(Rejection::InvalidArgument("batches do not nest".into()))
                        }
                        _ => self.apply_request(revision, r),
                    })
                    .collect(),
            );
        }
        self.now_ms = self.now_ms.max(request.stamp_ms);
        self.reclaim();
        #[cfg(feature = "negative-controls")]
        if crate::negative_control::active(crate::negative_control::Control::NoDedup) {
            return self.execute(revision, &request.command);
        }
        let Some(idem) = &request.idempotency else {
            return self.execute(revision, &request.command);
        };
        if idem.client_id.is_empty() || idem.client_id.len() > CLIENT_ID_BYTES_MAX {
            return Response::Rejected(Rejection::InvalidArgument(format!(
                "client_id must be 1..={CLIENT_ID_BYTES_MAX} bytes"
            )));
        }
        if let Some(session) = self.sessions.get(&idem.client_id) {
            if let Some(response) = session.results.get(&idem.request_id) {
                let response = decode_result(response);
                self.touch_session(&idem.client_id);
                return response;
            }
            if idem.request_id <= session.header.evicted_below {
                self.touch_session(&idem.client_id);
                return Response::Rejected(Rejection::DedupExpired {
                    client_id: idem.client_id.clone(),
                    request_id: idem.request_id,
                });
            }
        }
        let response = self.execute(revision, &request.command);
        self.remember(idem, &response);
        response
    }

    /// Reclaims expired leases and dedup sessions, a bounded number per call.
    fn reclaim(&mut self) {
        for _ in 0..RECLAIM_PER_APPLY_MAX {
            let Some((expires_ms, key)) = self.lease_expiry.first().cloned() else { break };
            if expires_ms > self.now_ms {
                break;
            }
            self.lease_expiry.remove(&(expires_ms, key.clone()));
            if let Some(lease) = self.leases.remove(&key) {
                self.count_expiry(&lease.region);
            }
            self.changes.push((record::key(record::LEASE, &key), None));
        }
        let window = self.settings.dedup_window_ms;
        for _ in 0..RECLAIM_PER_APPLY_MAX {
            let Some((last_seen_ms, _)) = self.session_lru.first() else { break };
            if last_seen_ms.saturating_add(window) >= self.now_ms {
                break;
            }
            self.forget_oldest_session();
        }
    }

    fn forget_oldest_session(&mut self) {
        let Some((_, client)) = self.session_lru.pop_first() else { return };
        if let Some(session) = self.sessions.remove(&client) {
            let pages = self.dirty_pages.entry(client.clone()).or_default();
            pages.extend(session.results.keys().map(|id| record::results_page(*id)));
        }
        self.dirty_sessions.insert(client);
    }

    fn touch_session(&mut self, client: &str) {
        let now_ms = self.now_ms;
        let Some(session) = self.sessions.get_mut(client) else { return };
        self.session_lru.remove(&(session.header.last_seen_ms, client.to_string()));
        session.header.last_seen_ms = now_ms;
        self.session_lru.insert((now_ms, client.to_string()));
        if !self.dirty_sessions.contains(client) {
            self.dirty_sessions.insert(client.to_string());
        }
    }

    /// Marks the results page holding `request_id` of `client` for rewriting.
    fn dirty_page(&mut self, client: &str, request_id: u64) {
        let page = record::results_page(request_id);
        // Looked up by &str first so that the common case allocates nothing.
        match self.dirty_pages.get_mut(client) {
            Some(pages) => {
                pages.insert(page);
            }
            None => {
                self.dirty_pages.insert(client.to_string(), BTreeSet::from([page]));
            }
        }
    }

    fn remember(&mut self, idem: &IdempotencyKey, response: &Response) {
        let client = &idem.client_id;
        if !self.sessions.contains_key(client) {
            while self.sessions.len() as u64 >= self.settings.dedup_clients_max.max(1) {
                self.forget_oldest_session();
            }
            let header = SessionHeader { last_seen_ms: self.now_ms, evicted_below: 0 };
            self.session_lru.insert((header.last_seen_ms, client.clone()));
            self.sessions.insert(client.clone(), Session { header, results: BTreeMap::new() });
        }
        let per_client_max = self.settings.dedup_per_client_max.max(1);
        let session = self.sessions.get_mut(client).expect("session inserted above");
        let mut evicted = Vec::new();
        while session.results.len() as u64 >= per_client_max {
            let Some((oldest, _)) = session.results.pop_first() else { break };
            session.header.evicted_below = session.header.evicted_below.max(oldest);
            evicted.push(oldest);
        }
        session.results.insert(idem.request_id, encode(response));
        for oldest in evicted {
            self.dirty_page(client, oldest);
        }
        self.dirty_page(client, idem.request_id);
        self.touch_session(client);
    }

    fn execute(&mut self, revision: u64, command: &Command) -> Response {
        let result = match command {
            Command::Noop => Ok(Response::Done { revision }),
            Command::Put { key, value, token } => {
                self.put(revision, key, value, *token).map(|_| Response::Put { revision, prev: None })
            }
            Command::Delete { key, token } => {
                self.delete(key, *token).map(|prev| Response::Delete { revision, prev })
            }
            Command::Txn(txn) => self.txn(revision, txn),
            Command::LeaseAcquire { key, holder, region, ttl_ms } => {
                self.lease_acquire(revision, key, holder, region, *ttl_ms)
            }
            Command::LeaseRenew { key, token } => self.lease_renew(revision, key, *token),
            Command::LeaseRelease { key, token } => self.lease_release(revision, key, *token),
            Command::LeaseTransfer { key, token, new_holder, new_region } => {
                self.lease_transfer(revision, key, *token, new_holder, new_region)
            }
            Command::PolicySet { prefix, policy } => self.policy_set(revision, prefix, policy),
            Command::PolicyRemove { prefix } => self.policy_remove(revision, prefix),
            Command::PolicyPromote { prefix, policy, values } => {
                self.policy_promote(revision, prefix, policy, values)
            }
            Command::Configure(settings) => self.configure(revision, settings),
            // Batches are unpacked in `apply_request`; one reaching here was nested.
            Command::Batch(_) => Err(Rejection::InvalidArgument("batches do not nest".into())),
            Command::PolicyFreeze { prefix } => self.policy_freeze(revision, prefix),
            Command::PolicyUnfreeze { prefix, frozen_revision } => {
                self.policy_unfreeze(revision, prefix, *frozen_revision)
            }
            Command::PolicyPromoteFrozen { prefix, policy, values, frozen_revision } => self
                .frozen_field(prefix, *frozen_revision)
                .and_then(|_| self.policy_promote(revision, prefix, policy, values)),
        };
        result.unwrap_or_else(Response::Rejected)
    }

    // ---- keys ----------------------------------------------------------------------------

    fn check_key(key: &[u8]) -> Result<(), Rejection> {
        if key.is_empty() {
            return Err(Rejection::InvalidArgument("key must not be empty".into()));
        }
        if key.len() > KEY_BYTES_HARD_MAX {
            return Err(Rejection::InvalidArgument(format!(
                "key is {} bytes, over the hard limit of {KEY_BYTES_HARD_MAX}",
                key.len()
            )));
        }
        Ok(())
    }

    /// Whether a write to `key` carrying `token` may proceed now.
    fn check_write(&self, key: &[u8], token: Option<u64>) -> Result<(), Rejection> {
        Self::check_key(key)?;
        let (field, policy) = self.policy(key);
        if policy.tier != Tier::Sacred {
            return Err(Rejection::WrongTier { field: field_name(&field), tier: policy.tier });
        }
        #[cfg(feature = "negative-controls")]
        if token.is_some() && crate::negative_control::active(crate::negative_control::Control::SkipFencing) {
            return Ok(());
        }
        let live = self.lease(key, self.now_ms);
        match (token, live) {
            (Some(t), Some(lease)) if t == lease.token => Ok(()),
            (Some(t), Some(lease)) if t < lease.token => {
                Err(Rejection::FencingRejected { presented: t, current: lease.token })
            }
            (Some(t), _) => {
                let stored = self.kv.get(key).and_then(|kv| kv.token).unwrap_or(0);
                let expired = self.leases.get(key).map_or(0, |l| l.token);
                let current = stored.max(expired);
                if t < current {
                    Err(Rejection::FencingRejected { presented: t, current })
                } else {
                    Err(Rejection::LeaseExpired { token: t })
                }
            }
            (None, _) if policy.lease == LeaseRule::Required => {
                Err(Rejection::LeaseRequired { field: field_name(&field) })
            }
            (None, Some(lease)) => {
                Err(Rejection::LeaseHeld { holder: lease.holder.clone(), token: lease.token })
            }
            (None, None) => Ok(()),
        }
    }

    /// Writes `key`, returning the previous value.
    fn put(
        &mut self,
        revision: u64,
        key: &[u8],
        value: &[u8],
        token: Option<u64>,
    ) -> Result<Option<KeyValue>, Rejection> {
        self.check_write(key, token)?;
        if value.len() > VALUE_BYTES_HARD_MAX {
            return Err(Rejection::InvalidArgument(format!(
                "value is {} bytes, over the hard limit of {VALUE_BYTES_HARD_MAX}",
                value.len()
            )));
        }
        let prev = self.kv.get(key);
        let prev_bytes = prev.map_or(0, |kv| (kv.key.len() + kv.value.len()) as u64);
        let bytes = self.sacred_bytes - prev_bytes + (key.len() + value.len()) as u64;
        if bytes > self.settings.sacred_bytes_max && bytes > self.sacred_bytes {
            return Err(Rejection::QuotaExceeded {
                limit: "sacred_bytes_max".into(),
                max: self.settings.sacred_bytes_max,
            });
        }
        let kv = KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            version: prev.map_or(1, |p| p.version + 1),
            create_revision: prev.map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            token,
        };
        Ok(self.set_kv(kv))
    }

    fn delete(&mut self, key: &[u8], token: Option<u64>) -> Result<Option<KeyValue>, Rejection> {
        self.check_write(key, token)?;
        Ok(self.remove_kv(key))
    }

    fn set_kv(&mut self, kv: KeyValue) -> Option<KeyValue> {
        self.changes.push((record::key(record::KV, &kv.key), Some(encode(&kv))));
        self.sacred_bytes += (kv.key.len() + kv.value.len()) as u64;
        let prev = self.kv.insert(kv.key.clone(), kv);
        if let Some(p) = &prev {
            self.sacred_bytes -= (p.key.len() + p.value.len()) as u64;
        }
        prev
    }

    fn remove_kv(&mut self, key: &[u8]) -> Option<KeyValue> {
        let prev = self.kv.remove(key)?;
        self.sacred_bytes -= (prev.key.len() + prev.value.len()) as u64;
        self.changes.push((record::key(record::KV, key), None));
        Some(prev)
    }

    // ---- transactions --------------------------------------------------------------------

    fn compare_holds(&self, compare: &Compare) -> bool {
        use std::cmp::Ordering;
        let kv = self.kv.get(&compare.key);
        let ordering = match &compare.target {
            CompareTarget::Value(v) => match kv {
                Some(kv) => kv.value.as_slice().cmp(v.as_slice()),
                // An absent key has no value: only NotEqual holds.
                None => return compare.op == CompareOp::NotEqual,
            },
            CompareTarget::Version(v) => kv.map_or(0, |kv| kv.version).cmp(v),
            CompareTarget::CreateRevision(v) => kv.map_or(0, |kv| kv.create_revision).cmp(v),
            CompareTarget::ModRevision(v) => kv.map_or(0, |kv| kv.mod_revision).cmp(v),
            CompareTarget::Exists(e) => kv.is_some().cmp(e),
            CompareTarget::LeaseToken(t) => {
                self.lease(&compare.key, self.now_ms).map_or(0, |l| l.token).cmp(t)
            }
        };
        match compare.op {
            CompareOp::Equal => ordering == Ordering::Equal,
            CompareOp::NotEqual => ordering != Ordering::Equal,
            CompareOp::Greater => ordering == Ordering::Greater,
            CompareOp::Less => ordering == Ordering::Less,
        }
    }

    fn txn(&mut self, revision: u64, txn: &Txn) -> Result<Response, Rejection> {
        for (name, len) in [
            ("compares", txn.compares.len()),
            ("success ops", txn.success.len()),
            ("failure ops", txn.failure.len()),
        ] {
            if len > TXN_OPS_HARD_MAX {
                return Err(Rejection::InvalidArgument(format!(
                    "transaction has {len} {name}, over the hard limit of {TXN_OPS_HARD_MAX}"
                )));
            }
        }
        for compare in &txn.compares {
            Self::check_key(&compare.key)?;
        }
        let succeeded = txn.compares.iter().all(|c| self.compare_holds(c));
        let ops = if succeeded { &txn.success } else { &txn.failure };

        // Run the ops in order, keeping an undo log: a refused op rolls every earlier one
        // back, so a transaction is all or nothing.
        let mark = self.changes.len();
        let mut undo: Vec<(Bytes, Option<KeyValue>)> = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            let step = match op {
                TxnOp::Get { key } => {
                    Self::check_key(key).map(|_| TxnOpResult::Get(self.kv.get(key).cloned()))
                }
                TxnOp::Put { key, value, token } => self.put(revision, key, value, *token).map(|prev| {
                    undo.push((key.clone(), prev.clone()));
                    TxnOpResult::Put { prev }
                }),
                TxnOp::Delete { key, token } => self.delete(key, *token).map(|prev| {
                    undo.push((key.clone(), prev.clone()));
                    TxnOpResult::Delete { prev }
                }),
            };
            match step {
                Ok(result) => results.push(result),
                Err(rejection) => {
                    for (key, prev) in undo.into_iter().rev() {
                        match prev {
                            Some(kv) => {
                                self.set_kv(kv);
                            }
                            None => {
                                self.remove_kv(&key);
                            }
                        }
                    }
                    self.changes.truncate(mark);
                    return Err(rejection);
                }
            }
        }
        Ok(Response::Txn { revision, succeeded, results })
    }

    // ---- leases --------------------------------------------------------------------------

    fn set_lease(&mut self, lease: Lease) {
        if let Some(old) = self.leases.get(&lease.key) {
            self.lease_expiry.remove(&(old.expires_ms, old.key.clone()));
        }
        self.lease_expiry.insert((lease.expires_ms, lease.key.clone()));
        self.changes.push((record::key(record::LEASE, &lease.key), Some(encode(&lease))));
        self.leases.insert(lease.key.clone(), lease);
    }

    /// The live lease on `key` if `token` is its token, else the reason it is not.
    fn live_lease(&self, key: &[u8], token: u64) -> Result<Lease, Rejection> {
        match self.lease(key, self.now_ms) {
            Some(lease) if lease.token == token => Ok(lease.clone()),
            Some(lease) if token < lease.token => {
                Err(Rejection::FencingRejected { presented: token, current: lease.token })
            }
            _ => Err(Rejection::LeaseExpired { token }),
        }
    }

    fn check_lease_args(&self, key: &[u8], holder: &str, region: &str) -> Result<(), Rejection> {
        Self::check_key(key)?;
        if holder.is_empty() || holder.len() > NAME_BYTES_MAX || region.len() > NAME_BYTES_MAX {
            return Err(Rejection::InvalidArgument(format!(
                "holder must be 1..={NAME_BYTES_MAX} bytes and region at most {NAME_BYTES_MAX}"
            )));
        }
        let (field, policy) = self.policy(key);
        if policy.tier != Tier::Sacred {
            return Err(Rejection::WrongTier { field: field_name(&field), tier: policy.tier });
        }
        Ok(())
    }

    fn lease_acquire(
        &mut self,
        revision: u64,
        key: &[u8],
        holder: &str,
        region: &str,
        ttl_ms: u64,
    ) -> Result<Response, Rejection> {
        self.check_lease_args(key, holder, region)?;
        if !(LEASE_TTL_MS_MIN..=LEASE_TTL_MS_MAX).contains(&ttl_ms) {
            return Err(Rejection::InvalidArgument(format!(
                "ttl_ms must be in {LEASE_TTL_MS_MIN}..={LEASE_TTL_MS_MAX}, got {ttl_ms}"
            )));
        }
        let now_ms = self.now_ms;
        let lease = match self.lease(key, now_ms) {
            Some(live) if live.holder != holder => {
                return Err(Rejection::LeaseHeld { holder: live.holder.clone(), token: live.token })
            }
            // The holder asks again: same grant, same token, extended.
            Some(live) => {
                Lease { region: region.to_string(), ttl_ms, expires_ms: now_ms + ttl_ms, ..live.clone() }
            }
            None => {
                if self.leases.len() as u64 >= self.settings.leases_max && !self.leases.contains_key(key) {
                    return Err(Rejection::QuotaExceeded {
                        limit: "leases_max".into(),
                        max: self.settings.leases_max,
                    });
                }
                Lease {
                    key: key.to_vec(),
                    holder: holder.to_string(),
                    region: region.to_string(),
                    token: revision,
                    ttl_ms,
                    granted_ms: now_ms,
                    expires_ms: now_ms + ttl_ms,
                }
            }
        };
        self.set_lease(lease.clone());
        Ok(Response::Lease { revision, lease })
    }

    fn lease_renew(&mut self, revision: u64, key: &[u8], token: u64) -> Result<Response, Rejection> {
        Self::check_key(key)?;
        let mut lease = self.live_lease(key, token)?;
        lease.expires_ms = self.now_ms + lease.ttl_ms;
        self.set_lease(lease.clone());
        Ok(Response::Lease { revision, lease })
    }

    fn lease_release(&mut self, revision: u64, key: &[u8], token: u64) -> Result<Response, Rejection> {
        Self::check_key(key)?;
        let lease = self.live_lease(key, token)?;
        // Drop the record: a write with the released token then finds no live lease and is
        // refused (`LeaseExpired`, or `FencingRejected` once a newer token wrote the key).
        self.lease_expiry.remove(&(lease.expires_ms, lease.key.clone()));
        self.leases.remove(key);
        self.changes.push((record::key(record::LEASE, key), None));
        Ok(Response::LeaseReleased { revision })
    }

    fn lease_transfer(
        &mut self,
        revision: u64,
        key: &[u8],
        token: u64,
        new_holder: &str,
        new_region: &str,
    ) -> Result<Response, Rejection> {
        self.check_lease_args(key, new_holder, new_region)?;
        let old = self.live_lease(key, token)?;
        let lease = Lease {
            holder: new_holder.to_string(),
            region: new_region.to_string(),
            token: revision,
            granted_ms: self.now_ms,
            expires_ms: self.now_ms + old.ttl_ms,
            ..old
        };
        self.set_lease(lease.clone());
        Ok(Response::Lease { revision, lease })
    }

    // ---- policies ------------------------------------------------------------------------

    fn check_policy(prefix: &[u8], policy: &Policy) -> Result<(), Rejection> {
        Self::check_key(prefix).map_err(|_| {
            Rejection::InvalidArgument(format!("field prefix must be 1..={KEY_BYTES_HARD_MAX} bytes"))
        })?;
        if policy.tier == Tier::Relaxed && policy.staleness_ms == 0 {
            return Err(Rejection::InvalidArgument(
                "a relaxed field needs a staleness budget above 0 ms".into(),
            ));
        }
        if policy.tier == Tier::Relaxed && policy.lease == LeaseRule::Required {
            return Err(Rejection::InvalidArgument(
                "lease = required needs the sacred tier: the relaxed tier cannot enforce fencing".into(),
            ));
        }
        Ok(())
    }

    fn record_change(
        &mut self,
        revision: u64,
        prefix: &[u8],
        before: Option<Policy>,
        after: Option<Policy>,
    ) -> PolicyChange {
        let change = PolicyChange { revision, stamp_ms: self.now_ms, prefix: prefix.to_vec(), before, after };
        if self.history.len() >= POLICY_HISTORY_MAX {
            self.history.pop_front();
        }
        self.history.push_back(change.clone());
        change
    }

    fn write_policy(&mut self, revision: u64, prefix: &[u8], policy: Option<&Policy>) -> Option<Policy> {
        let key = record::key(record::POLICY, prefix);
        match policy {
            Some(policy) => {
                // Keys that stay relaxed keep the start of their relaxed period (see
                // `FieldPolicy::relaxed_since_ms`); keys that become relaxed start one now.
                // The keys this field governs from now on were governed by `field(prefix)`.
                let relaxed_since_ms = match self.field(prefix) {
                    Some(f) if f.policy.tier == Tier::Relaxed => f.relaxed_since_ms,
                    _ => self.now_ms,
                };
                let fp = FieldPolicy {
                    prefix: prefix.to_vec(),
                    policy: policy.clone(),
                    revision,
                    set_ms: self.now_ms,
                    relaxed_since_ms: if policy.tier == Tier::Relaxed { relaxed_since_ms } else { 0 },
                    frozen: None,
                };
                self.changes.push((key, Some(encode(&fp))));
                self.policies.insert(prefix.to_vec(), fp).map(|f| f.policy)
            }
            None => {
                self.changes.push((key, None));
                self.policies.remove(prefix).map(|f| f.policy)
            }
        }
    }

    /// Refuses a policy change that would move keys into or out of a frozen field: its
    /// values are being collected for a promotion.
    fn check_not_frozen(&self, prefix: &[u8], field: Option<&FieldPolicy>) -> Result<(), Rejection> {
        match field {
            Some(FieldPolicy { frozen: Some(r), prefix: frozen_prefix, .. }) => {
                Err(Rejection::InvalidArgument(format!(
                    "keys under {:?} belong to field {:?}, frozen by revision {r} while it is promoted to \
                     sacred; retry when the promotion ends",
                    field_name(prefix),
                    field_name(frozen_prefix)
                )))
            }
            _ => Ok(()),
        }
    }

    fn policy_set(&mut self, revision: u64, prefix: &[u8], policy: &Policy) -> Result<Response, Rejection> {
        Self::check_policy(prefix, policy)?;
        let (field, current) = self.policy(prefix);
        if current.tier == Tier::Relaxed && policy.tier == Tier::Sacred {
            return Err(Rejection::InvalidArgument(format!(
                "keys under {:?} are relaxed (field {:?}); making them sacred needs `policy promote`, \
                 which writes their converged values first",
                field_name(prefix),
                field_name(&field)
            )));
        }
        self.check_not_frozen(prefix, self.field(prefix))?;
        if !self.policies.contains_key(prefix) && self.policies.len() as u64 >= self.settings.policies_max {
            return Err(Rejection::QuotaExceeded {
                limit: "policies_max".into(),
                max: self.settings.policies_max,
            });
        }
        let before = self.write_policy(revision, prefix, Some(policy));
        let change = self.record_change(revision, prefix, before, Some(policy.clone()));
        self.config_dirty = true;
        Ok(Response::Policy { revision, change })
    }

    fn policy_remove(&mut self, revision: u64, prefix: &[u8]) -> Result<Response, Rejection> {
        let Some(own) = self.policies.get(prefix).cloned() else {
            return Err(Rejection::InvalidArgument(format!("no field {:?} to remove", field_name(prefix))));
        };
        let parent = (0..prefix.len()).rev().find_map(|n| self.policies.get(&prefix[..n])).cloned();
        self.check_not_frozen(prefix, Some(&own))?;
        self.check_not_frozen(prefix, parent.as_ref())?;
        let after_tier = parent.as_ref().map_or(Tier::Sacred, |p| p.policy.tier);
        if own.policy.tier == Tier::Relaxed && after_tier == Tier::Sacred {
            return Err(Rejection::InvalidArgument(format!(
                "field {:?} is relaxed; removing it would make its keys sacred: use `policy promote`",
                field_name(prefix)
            )));
        }
        // The keys' relaxed period (the timestamp of their seed) must not change: a later
        // start would let the frozen seed beat relaxed writes, an earlier one would let
        // entries of an earlier period beat the seed.
        if let Some(parent) = parent.as_ref().filter(|p| p.policy.tier == Tier::Relaxed) {
            if own.policy.tier == Tier::Sacred || own.relaxed_since_ms != parent.relaxed_since_ms {
                return Err(Rejection::InvalidArgument(format!(
                    "removing field {:?} would move its keys into the relaxed period of field {:?}; \
                     set the policy you want on {:?} instead",
                    field_name(prefix),
                    field_name(&parent.prefix),
                    field_name(prefix)
                )));
            }
        }
        let before = self.write_policy(revision, prefix, None);
        let change = self.record_change(revision, prefix, before, None);
        self.config_dirty = true;
        Ok(Response::Policy { revision, change })
    }

    fn policy_freeze(&mut self, revision: u64, prefix: &[u8]) -> Result<Response, Rejection> {
        Self::check_key(prefix).map_err(|_| {
            Rejection::InvalidArgument(format!("field prefix must be 1..={KEY_BYTES_HARD_MAX} bytes"))
        })?;
        let Some(field) = self.field(prefix).filter(|f| f.policy.tier == Tier::Relaxed).cloned() else {
            return Err(Rejection::InvalidArgument(format!(
                "keys under {:?} are sacred; only a relaxed field can be frozen",
                field_name(prefix)
            )));
        };
        if let Some(r) = field.frozen {
            return Err(Rejection::InvalidArgument(format!(
                "field {:?} is already frozen by revision {r}: a promotion is in progress",
                field_name(&field.prefix)
            )));
        }
        let fp = if field.prefix == prefix {
            FieldPolicy { frozen: Some(revision), ..field }
        } else {
            if self.policies.len() as u64 >= self.settings.policies_max {
                return Err(Rejection::QuotaExceeded {
                    limit: "policies_max".into(),
                    max: self.settings.policies_max,
                });
            }
            // A field of its own, governed like its parent (same period), frozen.
            FieldPolicy {
                prefix: prefix.to_vec(),
                policy: field.policy,
                revision,
                set_ms: self.now_ms,
                relaxed_since_ms: field.relaxed_since_ms,
                frozen: Some(revision),
            }
        };
        self.changes.push((record::key(record::POLICY, prefix), Some(encode(&fp))));
        self.policies.insert(prefix.to_vec(), fp);
        Ok(Response::Done { revision })
    }

    /// The own field of `prefix` if it is frozen by the entry at `frozen_revision`.
    fn frozen_field(&self, prefix: &[u8], frozen_revision: u64) -> Result<FieldPolicy, Rejection> {
        match self.policies.get(prefix) {
            Some(f) if f.frozen == Some(frozen_revision) => Ok(f.clone()),
            _ => Err(Rejection::InvalidArgument(format!(
                "field {:?} is not frozen by revision {frozen_revision} (the promotion was abandoned \
                 or finished)",
                field_name(prefix)
            ))),
        }
    }

    fn policy_unfreeze(
        &mut self,
        revision: u64,
        prefix: &[u8],
        frozen_revision: u64,
    ) -> Result<Response, Rejection> {
        let field = self.frozen_field(prefix, frozen_revision)?;
        let key = record::key(record::POLICY, prefix);
        if field.revision == frozen_revision {
            // The freeze created the field: remove it, its parent governs as before.
            self.changes.push((key, None));
            self.policies.remove(prefix);
        } else {
            let fp = FieldPolicy { frozen: None, ..field };
            self.changes.push((key, Some(encode(&fp))));
            self.policies.insert(prefix.to_vec(), fp);
        }
        Ok(Response::Done { revision })
    }

    fn policy_promote(
        &mut self,
        revision: u64,
        prefix: &[u8],
        policy: &Policy,
        values: &[(Bytes, Option<Bytes>)],
    ) -> Result<Response, Rejection> {
        Self::check_policy(prefix, policy)?;
        if policy.tier != Tier::Sacred {
            return Err(Rejection::InvalidArgument("promote needs a sacred target policy".into()));
        }
        let (field, current) = self.policy(prefix);
        if current.tier != Tier::Relaxed {
            return Err(Rejection::InvalidArgument(format!(
                "keys under {:?} are already sacred (field {:?})",
                field_name(prefix),
                field_name(&field)
            )));
        }
        if values.len() > TXN_OPS_HARD_MAX * 64 {
            return Err(Rejection::InvalidArgument("too many values in one promotion".into()));
        }
        for (key, value) in values {
            if !key.starts_with(prefix) {
                return Err(Rejection::InvalidArgument(format!(
                    "promoted key {:?} is outside field {:?}",
                    field_name(key),
                    field_name(prefix)
                )));
            }
            Self::check_key(key)?;
            if value.as_ref().is_some_and(|v| v.len() > VALUE_BYTES_HARD_MAX) {
                return Err(Rejection::InvalidArgument(format!(
                    "value of {:?} is too large",
                    field_name(key)
                )));
            }
        }
        if !self.policies.contains_key(prefix) && self.policies.len() as u64 >= self.settings.policies_max {
            return Err(Rejection::QuotaExceeded {
                limit: "policies_max".into(),
                max: self.settings.policies_max,
            });
        }
        // Flip the tier first, so the writes below land in the sacred tier.
        let before = self.write_policy(revision, prefix, Some(policy));
        for (key, value) in values {
            // Keys under a nested field that stays relaxed are not promoted.
            if self.policy(key).1.tier != Tier::Sacred {
                continue;
            }
            match value {
                Some(value) => {
                    let prev = self.kv.get(key.as_slice());
                    let kv = KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        version: prev.map_or(1, |p| p.version + 1),
                        create_revision: prev.map_or(revision, |p| p.create_revision),
                        mod_revision: revision,
                        token: None,
                    };
                    self.set_kv(kv);
                }
                None => {
                    self.remove_kv(key);
                }
            }
        }
        let change = self.record_change(revision, prefix, before, Some(policy.clone()));
        self.config_dirty = true;
        Ok(Response::Policy { revision, change })
    }

    fn configure(&mut self, revision: u64, settings: &Settings) -> Result<Response, Rejection> {
        for (name, value) in [
            ("dedup_window_ms", settings.dedup_window_ms),
            ("dedup_per_client_max", settings.dedup_per_client_max),
            ("dedup_clients_max", settings.dedup_clients_max),
            ("sacred_bytes_max", settings.sacred_bytes_max),
            ("leases_max", settings.leases_max),
            ("policies_max", settings.policies_max),
        ] {
            if value == 0 {
                return Err(Rejection::InvalidArgument(format!("setting {name} must be above 0")));
            }
        }
        self.settings = settings.clone();
        self.config_dirty = true;
        Ok(Response::Done { revision })
    }
}

/// The record of `session`'s results page `page`: `None` when the page holds no result.
///
/// The record is bincode's encoding of `Vec<(u64, Response)>`, put together from the
/// results' own encodings: bincode 1 (`bincode::serialize`) writes a sequence as its length
/// (u64, little-endian) followed by its elements, and a tuple as its fields in order, so
/// the page is the count, then each id (u64, little-endian) and its result's bytes.
/// `load` decodes it as that type; a test holds the two encodings equal.
fn encode_page(session: &Session, page: u64) -> Option<Vec<u8>> {
    let first = page * record::RESULTS_PER_PAGE;
    let last = first + (record::RESULTS_PER_PAGE - 1);
    let results = session.results.range(first..=last);
    let (count, bytes) = results.clone().fold((0u64, 8), |(n, b), (_, r)| (n + 1, b + 8 + r.len()));
    if count == 0 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes);
    out.extend_from_slice(&count.to_le_bytes());
    for (id, result) in results {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(result);
    }
    Some(out)
}

/// A remembered result, from the encoding `remember` or `load` made of it.
fn decode_result(bytes: &[u8]) -> Response {
    // Only this module's own encodings of a `Response` are kept (`load` decodes what it
    // reads and encodes it again), so decoding cannot fail; a failure is a bug.
    bincode::deserialize(bytes).expect("a remembered result decodes")
}

fn parse_results_key(key: &[u8]) -> Result<(String, u64), CorruptRecord> {
    let corrupt = |reason: &str| CorruptRecord { key: field_name(key), reason: reason.to_string() };
    let rest = key.get(1..).ok_or_else(|| corrupt("short result key"))?;
    let len_bytes: [u8; 2] =
        rest.get(..2).and_then(|b| b.try_into().ok()).ok_or_else(|| corrupt("short result key"))?;
    let len = u16::from_be_bytes(len_bytes) as usize;
    let client = rest.get(2..2 + len).ok_or_else(|| corrupt("short result key"))?;
    let id_bytes: [u8; 8] = rest
        .get(2 + len..)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| corrupt("bad page number in results key"))?;
    let client = String::from_utf8(client.to_vec()).map_err(|_| corrupt("client id is not UTF-8"))?;
    Ok((client, u64::from_be_bytes(id_bytes)))
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
