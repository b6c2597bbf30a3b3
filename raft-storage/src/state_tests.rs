//! Tests of the deterministic state machine: each command's semantics, the all-or-nothing
//! rule, fencing, leases, policies, dedup, and that persistence (records, changes, load)
//! reproduces the same state.

use openraft::CommittedLeaderId;
use openraft::EntryPayload;
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;

use super::*;

fn entry(index: u64, stamp_ms: u64, idem: Option<(&str, u64)>, command: Command) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Request {
            stamp_ms,
            idempotency: idem.map(|(c, r)| IdempotencyKey { client_id: c.to_string(), request_id: r }),
            command,
        }),
    }
}

/// Applies commands at consecutive indexes; the clock advances by `step_ms` per entry.
struct Driver {
    state: State,
    index: u64,
    now_ms: u64,
}

impl Driver {
    fn new() -> Self {
        Driver { state: State::new(), index: 0, now_ms: 1_000_000 }
    }

    fn at(&mut self, now_ms: u64) -> &mut Self {
        self.now_ms = now_ms;
        self
    }

    fn apply(&mut self, command: Command) -> Response {
        self.index += 1;
        self.state.apply(&entry(self.index, self.now_ms, None, command))
    }

    fn apply_idem(&mut self, client: &str, request_id: u64, command: Command) -> Response {
        self.index += 1;
        self.state.apply(&entry(self.index, self.now_ms, Some((client, request_id)), command))
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put { key: key.into(), value: value.into(), token: None }
}

fn put_t(key: &str, value: &str, token: u64) -> Command {
    Command::Put { key: key.into(), value: value.into(), token: Some(token) }
}

fn acquire(key: &str, holder: &str, ttl_ms: u64) -> Command {
    Command::LeaseAcquire { key: key.into(), holder: holder.into(), region: "eu".into(), ttl_ms }
}

fn relaxed(staleness_ms: u64) -> Policy {
    Policy { tier: Tier::Relaxed, staleness_ms, ttl_ms: 0, lease: LeaseRule::None }
}

fn rejected(r: Response) -> Rejection {
    match r {
        Response::Rejected(r) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn token_of(r: Response) -> u64 {
    match r {
        Response::Lease { lease, .. } => lease.token,
        other => panic!("expected a lease, got {other:?}"),
    }
}

#[test]
fn put_tracks_version_and_revisions() {
    let mut d = Driver::new();
    assert_eq!(d.apply(put("a", "1")), Response::Put { revision: 1, prev: None });
    d.apply(put("b", "x"));
    d.apply(put("a", "2"));
    let kv = d.state.get(b"a").expect("a exists").clone();
    assert_eq!((kv.version, kv.create_revision, kv.mod_revision), (2, 1, 3));
    assert_eq!(kv.value, b"2");
    assert!(matches!(
        d.apply(Command::Delete { key: b"a".to_vec(), token: None }),
        Response::Delete { prev: Some(_), .. }
    ));
    d.apply(put("a", "3"));
    let kv = d.state.get(b"a").expect("a recreated");
    assert_eq!((kv.version, kv.create_revision), (1, 5), "a deleted key starts over");
    assert_eq!(d.state.sacred_bytes(), 2 + 2);
}

#[test]
fn range_pages_and_reports_more() {
    let mut d = Driver::new();
    for k in ["a", "b", "c", "d"] {
        d.apply(put(k, "v"));
    }
    let (page, more) = d.state.range(b"a", Some(b"d"), 2);
    assert_eq!(page.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), vec![b"a".to_vec(), b"b".to_vec()]);
    assert!(more);
    let (page, more) = d.state.range(b"c", Some(b"d"), 2);
    assert_eq!(page.len(), 1);
    assert!(!more);
    assert_eq!(d.state.range(b"d", Some(b"a"), 10), (Vec::new(), false));
}

#[test]
fn txn_compares_and_is_all_or_nothing() {
    let mut d = Driver::new();
    d.apply(put("a", "1"));
    let cas = |expect: &str, new: &str| {
        Command::Txn(Txn {
            compares: vec![Compare {
                key: b"a".to_vec(),
                op: CompareOp::Equal,
                target: CompareTarget::Value(expect.into()),
            }],
            success: vec![TxnOp::Put { key: b"a".to_vec(), value: new.into(), token: None }],
            failure: vec![TxnOp::Get { key: b"a".to_vec() }],
        })
    };
    assert!(matches!(d.apply(cas("1", "2")), Response::Txn { succeeded: true, .. }));
    match d.apply(cas("1", "3")) {
        Response::Txn { succeeded: false, results, .. } => {
            assert!(matches!(&results[0], TxnOpResult::Get(Some(kv)) if kv.value == b"2"));
        }
        other => panic!("{other:?}"),
    }
    // A refused op in the middle rolls back the ops before it.
    d.apply(Command::PolicySet { prefix: b"r/".to_vec(), policy: relaxed(5000) });
    let before = d.state.records();
    let r = d.apply(Command::Txn(Txn {
        compares: vec![],
        success: vec![
            TxnOp::Put { key: b"a".to_vec(), value: b"9".to_vec(), token: None },
            TxnOp::Delete { key: b"b".to_vec(), token: None },
            TxnOp::Put { key: b"r/x".to_vec(), value: b"9".to_vec(), token: None },
        ],
        failure: vec![],
    }));
    assert!(matches!(rejected(r), Rejection::WrongTier { .. }));
    let after = d.state.records();
    let strip =
        |r: Vec<(Vec<u8>, Vec<u8>)>| r.into_iter().filter(|(k, _)| k[0] != record::META).collect::<Vec<_>>();
    assert_eq!(strip(before), strip(after), "the failed transaction changed nothing");
    assert_eq!(d.state.get(b"a").map(|kv| kv.value.clone()), Some(b"2".to_vec()));
}

#[test]
fn absent_keys_compare_as_zero_and_not_existing() {
    let mut d = Driver::new();
    let t = |target, op| {
        Command::Txn(Txn {
            compares: vec![Compare { key: b"none".to_vec(), op, target }],
            success: vec![],
            failure: vec![],
        })
    };
    for (target, op, expect) in [
        (CompareTarget::Version(0), CompareOp::Equal, true),
        (CompareTarget::Exists(false), CompareOp::Equal, true),
        (CompareTarget::Exists(true), CompareOp::Equal, false),
        (CompareTarget::Value(b"x".to_vec()), CompareOp::Equal, false),
        (CompareTarget::Value(b"x".to_vec()), CompareOp::NotEqual, true),
        (CompareTarget::ModRevision(1), CompareOp::Less, true),
        (CompareTarget::LeaseToken(0), CompareOp::Equal, true),
    ] {
        match d.apply(t(target.clone(), op)) {
            Response::Txn { succeeded, .. } => assert_eq!(succeeded, expect, "{target:?} {op:?}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn tokens_fence_stale_holders() {
    let mut d = Driver::new();
    let t1 = token_of(d.apply(acquire("k", "alice", 1000)));
    assert!(matches!(d.apply(put_t("k", "a1", t1)), Response::Put { .. }));
    // Unfenced writes to a leased key are refused while the lease is live.
    assert!(matches!(rejected(d.apply(put("k", "x"))), Rejection::LeaseHeld { .. }));
    // Bob cannot acquire while alice holds it.
    assert!(matches!(rejected(d.apply(acquire("k", "bob", 1000))), Rejection::LeaseHeld { .. }));
    // Alice's lease expires; bob acquires a larger token.
    let now = d.now_ms + 1000;
    let t2 = token_of(d.at(now).apply(acquire("k", "bob", 1000)));
    assert!(t2 > t1, "tokens strictly increase");
    assert!(matches!(d.apply(put_t("k", "b1", t2)), Response::Put { .. }));
    // Alice resumes and writes with her old token: refused, naming both tokens.
    assert_eq!(
        rejected(d.apply(put_t("k", "a2", t1))),
        Rejection::FencingRejected { presented: t1, current: t2 }
    );
    assert_eq!(d.state.get(b"k").map(|kv| kv.value.clone()), Some(b"b1".to_vec()));
    // After bob's lease expires too, alice's token is still fenced by the key's token.
    let now = d.now_ms + 5000;
    d.at(now).apply(Command::Noop);
    assert_eq!(
        rejected(d.apply(put_t("k", "a3", t1))),
        Rejection::FencingRejected { presented: t1, current: t2 }
    );
    // A token newer than any grant belongs to no live lease.
    assert_eq!(rejected(d.apply(put_t("k", "z", t2 + 100))), Rejection::LeaseExpired { token: t2 + 100 });
}

#[test]
fn lease_renew_release_transfer_and_same_holder_reacquire() {
    let mut d = Driver::new();
    let t1 = token_of(d.apply(acquire("k", "alice", 1000)));
    let start = d.now_ms;
    // Same holder asks again: same grant, same token, extended.
    assert_eq!(token_of(d.at(start + 500).apply(acquire("k", "alice", 1000))), t1);
    match d.at(start + 900).apply(Command::LeaseRenew { key: b"k".to_vec(), token: t1 }) {
        Response::Lease { lease, .. } => assert_eq!(lease.expires_ms, start + 1900),
        other => panic!("{other:?}"),
    }
    // Transfer gives the new holder a new, larger token; the old one is fenced.
    let t2 = match d.apply(Command::LeaseTransfer {
        key: b"k".to_vec(),
        token: t1,
        new_holder: "bob".into(),
        new_region: "us".into(),
    }) {
        Response::Lease { lease, .. } => {
            assert_eq!((lease.holder.as_str(), lease.region.as_str()), ("bob", "us"));
            lease.token
        }
        other => panic!("{other:?}"),
    };
    assert!(t2 > t1);
    assert!(matches!(
        rejected(d.apply(Command::LeaseRenew { key: b"k".to_vec(), token: t1 })),
        Rejection::FencingRejected { .. }
    ));
    assert!(matches!(
        d.apply(Command::LeaseRelease { key: b"k".to_vec(), token: t2 }),
        Response::LeaseReleased { .. }
    ));
    // Released: writes with the released token are refused, and anyone may acquire.
    assert!(matches!(rejected(d.apply(put_t("k", "x", t2))), Rejection::LeaseExpired { .. }));
    let t3 = token_of(d.apply(acquire("k", "carol", 1000)));
    assert!(t3 > t2);
    // Bad ttl is refused.
    assert!(matches!(rejected(d.apply(acquire("j", "a", 1))), Rejection::InvalidArgument(_)));
}

#[test]
fn lease_required_fields_refuse_unfenced_writes() {
    let mut d = Driver::new();
    let p = Policy { tier: Tier::Sacred, staleness_ms: 0, ttl_ms: 0, lease: LeaseRule::Required };
    d.apply(Command::PolicySet { prefix: b"seat/".to_vec(), policy: p });
    assert_eq!(rejected(d.apply(put("seat/1", "x"))), Rejection::LeaseRequired { field: "seat/".into() });
    let t = token_of(d.apply(acquire("seat/1", "alice", 1000)));
    assert!(matches!(d.apply(put_t("seat/1", "x", t)), Response::Put { .. }));
    assert!(matches!(d.apply(put("other", "x")), Response::Put { .. }), "other keys are unaffected");
}

#[test]
fn the_state_clock_never_runs_backwards() {
    let mut d = Driver::new();
    let t = token_of(d.at(10_000).apply(acquire("k", "alice", 1000)));
    // A new leader whose clock is behind stamps an earlier time: the lease stays live
    // until the state clock (the max stamp seen) passes its expiry.
    d.at(5_000).apply(Command::Noop);
    assert_eq!(d.state.now_ms(), 10_000);
    assert!(matches!(d.at(10_500).apply(put_t("k", "v", t)), Response::Put { .. }));
    assert!(matches!(rejected(d.at(11_000).apply(put_t("k", "v", t))), Rejection::LeaseExpired { .. }));
}

#[test]
fn policies_demote_freely_and_promote_only_with_values() {
    let mut d = Driver::new();
    d.apply(put("cart/1", "a"));
    d.apply(put("cart/2", "b"));
    assert!(matches!(
        d.apply(Command::PolicySet { prefix: b"cart/".to_vec(), policy: relaxed(60_000) }),
        Response::Policy { .. }
    ));
    assert_eq!(d.state.policy(b"cart/1").1.tier, Tier::Relaxed);
    assert_eq!(d.state.relaxed_seed(b"cart/").len(), 2, "the sacred values are the relaxed seed");
    assert!(matches!(rejected(d.apply(put("cart/1", "x"))), Rejection::WrongTier { .. }));
    // Back to sacred only through promote.
    let sacred = Policy::DEFAULT;
    assert!(matches!(
        rejected(d.apply(Command::PolicySet { prefix: b"cart/".to_vec(), policy: sacred.clone() })),
        Rejection::InvalidArgument(_)
    ));
    assert!(matches!(
        rejected(d.apply(Command::PolicyRemove { prefix: b"cart/".to_vec() })),
        Rejection::InvalidArgument(_)
    ));
    assert!(matches!(
        rejected(d.apply(Command::PolicySet { prefix: b"cart/x/".to_vec(), policy: sacred.clone() })),
        Rejection::InvalidArgument(_)
    ));
    let values = vec![
        (b"cart/1".to_vec(), Some(b"z".to_vec())),
        (b"cart/2".to_vec(), None),
        (b"cart/3".to_vec(), Some(b"n".to_vec())),
    ];
    assert!(matches!(
        d.apply(Command::PolicyPromote { prefix: b"cart/".to_vec(), policy: sacred.clone(), values }),
        Response::Policy { .. }
    ));
    assert_eq!(d.state.policy(b"cart/1").1.tier, Tier::Sacred);
    assert_eq!(d.state.get(b"cart/1").map(|kv| (kv.value.clone(), kv.version)), Some((b"z".to_vec(), 2)));
    assert!(d.state.get(b"cart/2").is_none());
    assert!(d.state.get(b"cart/3").is_some());
    let history: Vec<_> = d
        .state
        .history()
        .map(|c| (c.before.as_ref().map(|p| p.tier), c.after.as_ref().map(|p| p.tier)))
        .collect();
    assert_eq!(history, vec![(None, Some(Tier::Relaxed)), (Some(Tier::Relaxed), Some(Tier::Sacred))]);
    // Promoting keys outside the field is refused.
    d.apply(Command::PolicySet { prefix: b"f/".to_vec(), policy: relaxed(1) });
    let values = vec![(b"g/1".to_vec(), Some(b"z".to_vec()))];
    assert!(matches!(
        rejected(d.apply(Command::PolicyPromote { prefix: b"f/".to_vec(), policy: sacred, values })),
        Rejection::InvalidArgument(_)
    ));
}

#[test]
fn retries_get_the_original_result_and_forgotten_ones_are_refused() {
    let mut d = Driver::new();
    let first = d.apply_idem("c1", 7, put("k", "v1"));
    let retry = d.apply_idem("c1", 7, put("k", "v1"));
    assert_eq!(first, retry, "a retry is answered with the original result");
    assert_eq!(d.state.get(b"k").map(|kv| kv.version), Some(1), "and not applied twice");
    // Rejections are remembered too.
    d.apply(Command::Configure(Settings { dedup_per_client_max: 2, ..Settings::default() }));
    let r = d.apply_idem("c1", 8, put("", "x"));
    assert_eq!(d.apply_idem("c1", 8, put("k", "other")), r);
    // Past the per-client bound the oldest result is forgotten; its retry is refused.
    d.apply_idem("c1", 9, put("k", "v2"));
    assert!(d.state.remembered(&IdempotencyKey { client_id: "c1".into(), request_id: 7 }).is_none());
    assert_eq!(
        rejected(d.apply_idem("c1", 7, put("k", "v1"))),
        Rejection::DedupExpired { client_id: "c1".into(), request_id: 7 }
    );
    assert_eq!(d.state.get(b"k").map(|kv| kv.version), Some(2));
}

#[test]
fn results_are_persisted_in_pages_that_eviction_rewrites_and_forgetting_removes() {
    let mut d = Driver::new();
    d.apply(Command::Configure(Settings {
        dedup_per_client_max: 100,
        dedup_clients_max: 1,
        ..Settings::default()
    }));
    d.state.take_changes();
    let page_key = |client: &str, page: u64| record::results_key(client, page);
    // 70 requests of one client in one take: two pages (ids 1..=63 and 64..=70), one header.
    for id in 1..=70 {
        d.apply_idem("c1", id, put("k", "v"));
    }
    let changes: BTreeMap<_, _> = d.state.take_changes().into_iter().collect();
    assert_eq!(changes.keys().filter(|k| k[0] == record::RESULTS).count(), 2, "one record per page");
    let page0: Vec<(u64, Response)> =
        bincode::deserialize(changes[&page_key("c1", 0)].as_ref().unwrap()).unwrap();
    assert_eq!(page0.iter().map(|(id, _)| *id).collect::<Vec<_>>(), (1..=63).collect::<Vec<_>>());
    assert!(changes.contains_key(&record::key(record::SESSION, b"c1")));
    // Past 100 results the oldest are evicted: page 0 is rewritten without them, then
    // removed once empty.
    for id in 71..=110 {
        d.apply_idem("c1", id, put("k", "v"));
    }
    let changes: BTreeMap<_, _> = d.state.take_changes().into_iter().collect();
    let page0: Vec<(u64, Response)> =
        bincode::deserialize(changes[&page_key("c1", 0)].as_ref().unwrap()).unwrap();
    assert_eq!(page0.first().map(|(id, _)| *id), Some(11), "ids 1..=10 evicted");
    for id in 111..=200 {
        d.apply_idem("c1", id, put("k", "v"));
    }
    let changes: BTreeMap<_, _> = d.state.take_changes().into_iter().collect();
    assert_eq!(changes[&page_key("c1", 0)], None, "an empty page is removed");
    // A second client pushes the first out (dedup_clients_max = 1): all its records go.
    d.apply_idem("c2", 1, put("k", "v"));
    let changes: BTreeMap<_, _> = d.state.take_changes().into_iter().collect();
    for page in 1..=3 {
        assert_eq!(changes[&page_key("c1", page)], None, "page {page} of a forgotten client");
    }
    assert_eq!(changes[&record::key(record::SESSION, b"c1")], None);
    // The records reload to the same remembered results.
    let loaded = State::load(d.state.records()).expect("records load");
    assert!(loaded.remembered(&IdempotencyKey { client_id: "c2".into(), request_id: 1 }).is_some());
    assert!(loaded.remembered(&IdempotencyKey { client_id: "c1".into(), request_id: 150 }).is_none());
}

#[test]
fn a_results_page_is_bincodes_encoding_of_its_results() {
    // `encode_page` puts a page together from the results' own encodings; it must be
    // byte for byte what bincode makes of `Vec<(u64, Response)>`, which `load` decodes.
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut d = Driver::new();
    d.state.take_changes();
    let mut responses = BTreeMap::new();
    for id in 1..=150u64 {
        let response = d.apply_idem("c", id * 3, random_command(&mut rng));
        responses.insert(id * 3, response);
    }
    let changes = d.state.take_changes();
    let mut pages = 0;
    for (key, value) in changes.iter().filter(|(k, _)| k[0] == record::RESULTS) {
        let (_, page) = parse_results_key(key).expect("a results key");
        let expected: Vec<(u64, Response)> = responses
            .iter()
            .filter(|(id, _)| record::results_page(**id) == page)
            .map(|(id, r)| (*id, r.clone()))
            .collect();
        let expected = bincode::serialize(&expected).expect("encode");
        assert_eq!(value.as_deref(), Some(expected.as_slice()), "page {page} (seed {seed})");
        pages += 1;
    }
    assert_eq!(pages, 8, "ids 3..=450 span pages 0..=7 (seed {seed})");
}

#[test]
fn sessions_expire_after_the_window() {
    let mut d = Driver::new();
    d.apply(Command::Configure(Settings { dedup_window_ms: 1000, ..Settings::default() }));
    d.apply_idem("c1", 1, put("k", "v"));
    let later = d.now_ms + 1001;
    d.at(later).apply(Command::Noop);
    assert!(d.state.remembered(&IdempotencyKey { client_id: "c1".into(), request_id: 1 }).is_none());
}

#[test]
fn client_count_is_bounded() {
    let mut d = Driver::new();
    d.apply(Command::Configure(Settings { dedup_clients_max: 3, ..Settings::default() }));
    for c in 0..10 {
        d.apply_idem(&format!("client-{c}"), 1, put("k", "v"));
    }
    let remembered = (0..10)
        .filter(|c| {
            d.state.remembered(&IdempotencyKey { client_id: format!("client-{c}"), request_id: 1 }).is_some()
        })
        .count();
    assert_eq!(remembered, 3);
}

#[test]
fn quota_refuses_growth_but_not_deletes() {
    let mut d = Driver::new();
    d.apply(Command::Configure(Settings { sacred_bytes_max: 10, ..Settings::default() }));
    d.apply(put("a", "12345678"));
    assert!(matches!(rejected(d.apply(put("b", "12"))), Rejection::QuotaExceeded { .. }));
    assert!(matches!(d.apply(put("a", "1")), Response::Put { .. }), "shrinking is allowed");
    assert!(matches!(d.apply(Command::Delete { key: b"a".to_vec(), token: None }), Response::Delete { .. }));
    assert_eq!(d.state.sacred_bytes(), 0);
}

/// Random commands over a small key space, so that every rule gets exercised.
fn random_command(rng: &mut StdRng) -> Command {
    let key = format!("{}{}", ["a/", "b/", "seat/"][rng.gen_range(0..3)], rng.gen_range(0..4));
    let token = if rng.gen_bool(0.3) { Some(rng.gen_range(1..200)) } else { None };
    match rng.gen_range(0..10) {
        0..=3 => Command::Put { key: key.into_bytes(), value: vec![b'v'; rng.gen_range(0..5)], token },
        4 => Command::Delete { key: key.into_bytes(), token },
        5 => acquire(&key, ["alice", "bob"][rng.gen_range(0..2)], rng.gen_range(100..3000)),
        6 => Command::LeaseRelease { key: key.into_bytes(), token: rng.gen_range(1..200) },
        7 => Command::PolicySet {
            prefix: b"b/".to_vec(),
            policy: if rng.gen_bool(0.5) { relaxed(1000) } else { Policy::DEFAULT },
        },
        8 => Command::PolicyPromote {
            prefix: b"b/".to_vec(),
            policy: Policy::DEFAULT,
            values: vec![(b"b/1".to_vec(), Some(b"p".to_vec()))],
        },
        _ => Command::Txn(Txn {
            compares: vec![Compare {
                key: key.clone().into_bytes(),
                op: CompareOp::Greater,
                target: CompareTarget::Version(1),
            }],
            success: vec![TxnOp::Put { key: key.into_bytes(), value: b"t".to_vec(), token }],
            failure: vec![TxnOp::Delete { key: b"a/0".to_vec(), token: None }],
        }),
    }
}

fn seed() -> u64 {
    let seed = std::env::var("SEAM_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("seed={seed} (rerun with SEAM_TEST_SEED={seed})");
    seed
}

#[test]
fn apply_is_deterministic_and_persistence_reproduces_the_state() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut a = State::new();
    let mut b = State::new();
    // A copy maintained only through the change stream, as sled would hold it.
    let mut persisted: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
    let mut now = 1_000_000;
    // Small dedup bounds, so that results are evicted one by one (their pages rewritten),
    // whole sessions are forgotten (their pages removed), and ids span several pages.
    let bounds = Settings { dedup_per_client_max: 100, dedup_clients_max: 2, ..Settings::default() };
    for index in 1..=2000 {
        now += rng.gen_range(0..400);
        let client = ["c", "d", "e"][rng.gen_range(0..3)];
        let idem = if rng.gen_bool(0.5) { Some((client, rng.gen_range(1..300))) } else { None };
        let command = if index == 1 { Command::Configure(bounds.clone()) } else { random_command(&mut rng) };
        let e = entry(index, now - rng.gen_range(0..300), idem, command);
        let ra = a.apply(&e);
        let rb = b.apply(&e);
        assert_eq!(ra, rb, "seed {seed}: replicas diverged at index {index}");
        for (k, v) in a.take_changes() {
            match v {
                Some(v) => persisted.insert(k, v),
                None => persisted.remove(&k),
            };
        }
        if index % 500 == 0 {
            let records = a.records();
            assert_eq!(
                records,
                persisted.clone().into_iter().collect::<Vec<_>>(),
                "seed {seed}: changes != records at {index}"
            );
            let loaded = State::load(records.clone()).expect("records load");
            assert_eq!(loaded.records(), records, "seed {seed}: load(records) != records");
            assert_eq!(loaded.sacred_bytes(), a.sacred_bytes());
        }
    }
    assert_eq!(a.records(), b.records());
}

#[test]
fn load_refuses_corrupt_records() {
    let err = State::load(vec![(b"kbad".to_vec(), b"\xff".to_vec())]).expect_err("corrupt value");
    assert!(err.to_string().contains("kbad"), "{err}");
    assert!(State::load(vec![(b"zzz".to_vec(), vec![])]).is_err(), "unknown kind");
    assert!(State::load(vec![(Vec::new(), vec![])]).is_err(), "empty key");
    // A result filed under the wrong page, and an empty page, are corrupt.
    let misplaced = bincode::serialize(&vec![(64u64, Response::Done { revision: 1 })]).unwrap();
    let err = State::load(vec![(record::results_key("c", 0), misplaced)]).expect_err("misplaced");
    assert!(err.to_string().contains("does not belong in page 0"), "{err}");
    // A format 1 result record (one `Response` under the request id) is refused, not misread.
    for (id, response) in [
        (7u64, Response::Put { revision: 3, prev: None }),
        (1, Response::Done { revision: 1 }),
        (64, Response::Rejected(Rejection::InvalidArgument("x".into()))),
    ] {
        let old = bincode::serialize(&response).unwrap();
        let header = (record::key(record::SESSION, b"c"), encode(&SessionHeader::default()));
        let err =
            State::load(vec![header, (record::results_key("c", id), old)]).expect_err("format 1 record");
        assert!(err.to_string().contains("corrupt state record"), "{id}: {err}");
    }
    let empty = bincode::serialize(&Vec::<(u64, Response)>::new()).unwrap();
    let err = State::load(vec![(record::results_key("c", 0), empty)]).expect_err("empty page");
    assert!(err.to_string().contains("empty results page"), "{err}");
}

#[test]
fn relaxed_period_survives_relaxed_changes_and_freezes_guard_promotion() {
    let mut d = Driver::new();
    d.at(1_000).apply(put("cart/1", "a"));
    d.at(2_000).apply(Command::PolicySet { prefix: b"cart/".to_vec(), policy: relaxed(60_000) });
    let since = |d: &Driver, k: &[u8]| d.state.field(k).map(|f| f.relaxed_since_ms);
    assert_eq!(since(&d, b"cart/1"), Some(2_000));
    // A new budget, a nested field and a freeze keep the period (the seed's timestamp).
    d.at(3_000).apply(Command::PolicySet { prefix: b"cart/".to_vec(), policy: relaxed(5_000) });
    d.at(4_000).apply(Command::PolicySet { prefix: b"cart/x/".to_vec(), policy: relaxed(1_000) });
    assert_eq!((since(&d, b"cart/1"), since(&d, b"cart/x/1")), (Some(2_000), Some(2_000)));
    let freeze = d.at(5_000).apply(Command::PolicyFreeze { prefix: b"cart/".to_vec() });
    let Response::Done { revision: frozen } = freeze else { panic!("freeze: {freeze:?}") };
    assert_eq!(d.state.field(b"cart/1").and_then(|f| f.frozen), Some(frozen));
    assert_eq!(since(&d, b"cart/1"), Some(2_000));
    // While frozen: no second freeze, no policy change, no promotion under another freeze.
    assert!(matches!(
        rejected(d.apply(Command::PolicyFreeze { prefix: b"cart/".to_vec() })),
        Rejection::InvalidArgument(_)
    ));
    assert!(matches!(
        rejected(d.apply(Command::PolicySet { prefix: b"cart/".to_vec(), policy: relaxed(9) })),
        Rejection::InvalidArgument(_)
    ));
    let promote = |frozen_revision| Command::PolicyPromoteFrozen {
        prefix: b"cart/".to_vec(),
        policy: Policy::DEFAULT,
        values: vec![(b"cart/1".to_vec(), Some(b"z".to_vec()))],
        frozen_revision,
    };
    assert!(matches!(rejected(d.apply(promote(frozen + 100))), Rejection::InvalidArgument(_)));
    // Unfreeze, then a new freeze: the old freeze's promotion is refused.
    assert!(matches!(
        d.apply(Command::PolicyUnfreeze { prefix: b"cart/".to_vec(), frozen_revision: frozen }),
        Response::Done { .. }
    ));
    assert_eq!(d.state.field(b"cart/1").and_then(|f| f.frozen), None);
    let Response::Done { revision: again } = d.apply(Command::PolicyFreeze { prefix: b"cart/".to_vec() })
    else {
        panic!("second freeze refused")
    };
    assert!(matches!(rejected(d.apply(promote(frozen))), Rejection::InvalidArgument(_)));
    assert!(matches!(d.apply(promote(again)), Response::Policy { .. }));
    assert_eq!(d.state.policy(b"cart/1").1.tier, Tier::Sacred);
    assert_eq!(d.state.get(b"cart/1").map(|kv| kv.value.clone()), Some(b"z".to_vec()));
    assert_eq!(d.state.field(b"cart/1").and_then(|f| f.frozen), None);
}

#[test]
fn freezing_a_subprefix_creates_a_field_that_unfreezing_removes() {
    let mut d = Driver::new();
    d.at(1_000).apply(Command::PolicySet { prefix: b"a/".to_vec(), policy: relaxed(1_000) });
    let Response::Done { revision } = d.at(2_000).apply(Command::PolicyFreeze { prefix: b"a/b/".to_vec() })
    else {
        panic!("freeze refused")
    };
    let f = d.state.field(b"a/b/1").cloned().expect("a field of its own");
    assert_eq!((f.prefix.as_slice(), f.frozen, f.relaxed_since_ms), (&b"a/b/"[..], Some(revision), 1_000));
    assert_eq!(d.state.field(b"a/c").and_then(|f| f.frozen), None, "the parent stays writable");
    d.apply(Command::PolicyUnfreeze { prefix: b"a/b/".to_vec(), frozen_revision: revision });
    assert_eq!(d.state.field(b"a/b/1").map(|f| f.prefix.clone()), Some(b"a/".to_vec()));
    // Sacred keys cannot be frozen; removals that would shift a relaxed period are refused.
    assert!(matches!(
        rejected(d.apply(Command::PolicyFreeze { prefix: b"s/".to_vec() })),
        Rejection::InvalidArgument(_)
    ));
    d.at(3_000).apply(Command::PolicyPromote {
        prefix: b"a/x/".to_vec(),
        policy: Policy::DEFAULT,
        values: vec![],
    });
    assert!(matches!(
        rejected(d.apply(Command::PolicyRemove { prefix: b"a/x/".to_vec() })),
        Rejection::InvalidArgument(_)
    ));
}

#[test]
fn a_batch_applies_each_request_with_its_own_key_and_dedup() {
    let mut d = Driver::new();
    let sub = |c: &str, r: u64, cmd: Command| Request {
        stamp_ms: 1_000_000,
        idempotency: Some(IdempotencyKey { client_id: c.into(), request_id: r }),
        command: cmd,
    };
    let batch = Command::Batch(vec![
        sub("a", 1, put("x", "1")),
        sub("b", 1, put("y", "2")),
        sub("c", 1, put("", "bad")),
    ]);
    let Response::Batch(responses) = d.apply(batch) else { panic!("a batch answers a batch") };
    assert_eq!(responses.len(), 3);
    assert_eq!(responses[0], Response::Put { revision: 1, prev: None });
    assert_eq!(responses[1], Response::Put { revision: 1, prev: None });
    assert!(
        matches!(responses[2], Response::Rejected(Rejection::InvalidArgument(_))),
        "each request stands alone"
    );
    // A retry of a batched request, alone or in another batch, gets its original result.
    assert_eq!(d.apply_idem("a", 1, put("x", "other")), responses[0]);
    assert_eq!(d.state.get(b"x").map(|kv| kv.version), Some(1));
    // Batches do not nest.
    let nested = Command::Batch(vec![sub("d", 1, Command::Batch(vec![]))]);
    let Response::Batch(responses) = d.apply(nested) else { panic!("a batch answers a batch") };
    assert!(matches!(responses[0], Response::Rejected(Rejection::InvalidArgument(_))));
}
