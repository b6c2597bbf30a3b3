//! Close-and-reopen tests: what was made durable comes back; what is not ours is refused
//! without being touched.

mod common;

use std::time::Duration;

use common::*;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftLogStorageExt;
use openraft::storage::RaftStateMachine;
use openraft::testing::log_id;
use openraft::RaftLogReader;
use openraft::RaftSnapshotBuilder;
use seam_raft_storage::*;
use tempfile::TempDir;

fn open_data(dir: &std::path::Path) -> (LogStore, StateMachineStore) {
    seam_raft_storage::open(dir, config()).expect("open")
}

async fn read_log(log: &mut LogStore) -> Vec<Entry> {
    log.try_get_log_entries(..).await.expect("read log")
}

#[tokio::test]
async fn vote_log_committed_applied_and_snapshot_survive_reopen() {
    let tmp = TempDir::new().expect("tempdir");
    let data = tmp.path().join("data");
    let expected_membership;
    {
        let (mut log, mut sm) = open_data(&data);
        log.save_vote(&Vote::new(1, 1)).await.expect("vote");
        log.blocking_append([membership(1, 1)]).await.expect("append");
        log.blocking_append((2..=300).map(|i| put(1, i))).await.expect("append");
        // A new leader replaces the tail.
        log.save_vote(&Vote::new_committed(2, 1)).await.expect("vote");
        log.truncate(log_id(1, 1, 281)).await.expect("truncate");
        log.blocking_append((281..=290).map(|i| put(2, i))).await.expect("append");
        log.save_committed(Some(log_id(2, 1, 285))).await.expect("committed");

        let entries = read_log(&mut log).await;
        sm.apply(entries.into_iter().take(250)).await.expect("apply");
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1, 250)));
        let more = log.try_get_log_entries(251..=285).await.expect("read");
        sm.apply(more).await.expect("apply");
        log.purge(log_id(1, 1, 200)).await.expect("purge");
        expected_membership = sm.applied_state().await.expect("applied").1;
        assert!(log.segment_count() < 6, "purge deleted old segments: {:?}", segments(&data));
    }

    let (mut log, mut sm) = open_data(&data);
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new_committed(2, 1)));
    assert_eq!(log.read_committed().await.expect("committed"), Some(log_id(2, 1, 285)));
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 200)));
    assert_eq!(state.last_log_id, Some(log_id(2, 1, 290)));
    let entries = read_log(&mut log).await;
    let want: Vec<Entry> = (201..=280).map(|i| put(1, i)).chain((281..=290).map(|i| put(2, i))).collect();
    assert_eq!(entries, want, "the log after truncate and purge");

    let (applied, stored_membership) = sm.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(2, 1, 285)), "sled holds the applies (flushed on close)");
    assert_eq!(stored_membership, expected_membership);
    assert_eq!(stored_membership.log_id(), &Some(log_id(1, 1, 1)));
    {
        let handle = sm.state();
        let state = handle.read();
        assert_eq!(state.get(&key(285)).map(|kv| kv.value.clone()), Some(value(2, 285)));
        assert_eq!(state.get(&key(2)).map(|kv| kv.mod_revision), Some(2));
        assert!(state.get(&key(286)).is_none(), "not applied, not present");
    }
    let snapshot = sm.get_current_snapshot().await.expect("snapshot").expect("a snapshot");
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1, 250)));
}

#[tokio::test]
async fn applied_changes_reach_sled_without_another_apply() {
    // Changes are taken from the state every TAKE_CHANGES_EVERY_MS, by the next apply or,
    // when none comes, by the store's ticker: an idle node's sled catches up by itself.
    let tmp = TempDir::new().expect("tempdir");
    let (mut log, mut sm) = open_data(&tmp.path().join("data"));
    log.blocking_append([membership(1, 1)]).await.expect("append");
    log.blocking_append((2..=10).map(|i| put(1, i))).await.expect("append");
    sm.apply(read_log(&mut log).await).await.expect("apply");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut persisted = sm.persisted_applied().expect("read sled");
    while persisted != Some(log_id(1, 1, 10)) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        persisted = sm.persisted_applied().expect("read sled");
    }
    assert_eq!(persisted, Some(log_id(1, 1, 10)), "sled caught up with no further apply");
}

#[tokio::test]
async fn sled_behind_the_snapshot_is_reinstalled_from_it() {
    // sled is not synced on apply, so a crash can leave it behind the snapshot, with the log
    // purged in between. Losing sled entirely is the extreme case (and the documented way to
    // rebuild it).
    let tmp = TempDir::new().expect("tempdir");
    let data = tmp.path().join("data");
    {
        let (mut log, mut sm) = open_data(&data);
        log.blocking_append([membership(1, 1)]).await.expect("append");
        log.blocking_append((2..=40).map(|i| put(1, i))).await.expect("append");
        let entries = read_log(&mut log).await;
        sm.apply(entries.into_iter().take(30)).await.expect("apply");
        sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
        log.purge(log_id(1, 1, 30)).await.expect("purge");
    }
    std::fs::remove_dir_all(data.join("sm")).expect("lose sled");
    let (mut log, mut sm) = open_data(&data);
    let (applied, membership) = sm.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(1, 1, 30)));
    assert_eq!(membership.log_id(), &Some(log_id(1, 1, 1)));
    assert_eq!(sm.state().read().key_count(), 29);
    // openraft re-applies the rest from the log, which still has it.
    let rest = log.try_get_log_entries(31..=40).await.expect("read");
    assert_eq!(rest.len(), 10);
    sm.apply(rest).await.expect("apply");
    assert_eq!(sm.state().read().key_count(), 39);
}

#[tokio::test]
async fn reopen_waits_for_sleds_lock_left_by_the_previous_store() {
    // sled releases the flock on its `db` file when its last internal handle drops, which
    // can be a moment after the store is dropped: a reopen in place must wait, not fail.
    let tmp = TempDir::new().expect("tempdir");
    let data = tmp.path().join("data");
    drop(open_data(&data));
    let db = std::fs::File::open(data.join("sm").join("db")).expect("sled's db file");
    // Hold sled's lock ourselves, as a lingering sled thread would (waiting, bounded, for
    // the store just dropped to let go of it first).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    // SAFETY: flock only reads the descriptor, which `db` keeps open.
    while unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&db), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        assert!(std::time::Instant::now() < deadline, "sled never released its lock");
        std::thread::sleep(Duration::from_millis(10));
    }
    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(db);
    });
    let (_log, sm) = open_data(&data);
    assert_eq!(sm.state().read().applied(), None);
    holder.join().expect("holder");
}

#[tokio::test]
async fn an_installed_snapshot_survives_reopen() {
    let tmp = TempDir::new().expect("tempdir");
    let (leader, follower) = (tmp.path().join("leader"), tmp.path().join("follower"));
    let snapshot = {
        let (mut log, mut sm) = open_data(&leader);
        log.blocking_append([membership(1, 1)]).await.expect("append");
        log.blocking_append((2..=20).map(|i| put(1, i))).await.expect("append");
        sm.apply(read_log(&mut log).await).await.expect("apply");
        sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot")
    };
    {
        let (mut log, mut sm) = open_data(&follower);
        log.save_vote(&Vote::new_committed(1, 1)).await.expect("vote");
        log.blocking_append((1..=5).map(|i| put(1, i))).await.expect("append");
        let mut buffer = sm.begin_receiving_snapshot().await.expect("begin");
        *buffer = *snapshot.snapshot;
        sm.install_snapshot(&snapshot.meta, buffer).await.expect("install");
        log.purge(log_id(1, 1, 20)).await.expect("purge after install");
    }
    // The purge emptied the log: its segment was replaced by a fresh one that restates the
    // vote and the purge point.
    assert_eq!(segments(&follower), vec!["00000000000000000002.wal"]);
    let (mut log, mut sm) = open_data(&follower);
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new_committed(1, 1)));
    assert_eq!(log.get_log_state().await.expect("state").last_purged_log_id, Some(log_id(1, 1, 20)));
    assert_eq!(log.get_log_state().await.expect("state").last_log_id, Some(log_id(1, 1, 20)));
    assert_eq!(sm.applied_state().await.expect("applied").0, Some(log_id(1, 1, 20)));
    assert_eq!(sm.state().read().get(&key(20)).map(|kv| kv.value.clone()), Some(value(1, 20)));
    let current = sm.get_current_snapshot().await.expect("read").expect("snapshot");
    assert_eq!(current.meta, snapshot.meta);
}

#[tokio::test]
async fn a_purge_past_a_snapshot_being_installed_waits_for_it() {
    // openraft 0.9 purges the log up to a received snapshot without waiting for the state
    // machine to install it; the purge must not become durable before the snapshot does.
    let tmp = TempDir::new().expect("tempdir");
    let snapshot = {
        let (mut log, mut sm) = open_data(&tmp.path().join("leader"));
        log.blocking_append((1..=20).map(|i| put(1, i))).await.expect("append");
        sm.apply(read_log(&mut log).await).await.expect("apply");
        sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot")
    };
    let (mut log, mut sm) = open_data(&tmp.path().join("follower"));
    let buffer = sm.begin_receiving_snapshot().await.expect("begin");
    let purge = tokio::spawn(async move {
        log.purge(log_id(1, 1, 20)).await.expect("purge");
        log
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!purge.is_finished(), "the purge waits for the install");
    let mut buffer = buffer;
    *buffer = *snapshot.snapshot;
    sm.install_snapshot(&snapshot.meta, buffer).await.expect("install");
    let mut log =
        tokio::time::timeout(Duration::from_secs(5), purge).await.expect("purge finishes").expect("join");
    assert_eq!(log.get_log_state().await.expect("state").last_purged_log_id, Some(log_id(1, 1, 20)));

    // Bounded: with no install coming, the purge gives up with an error.
    let tmp2 = TempDir::new().expect("tempdir");
    let config = StorageConfig { purge_wait_ms_max: 50, ..config() };
    let (mut log, mut sm) = seam_raft_storage::open(tmp2.path(), config).expect("open");
    let _buffer = sm.begin_receiving_snapshot().await.expect("begin");
    let err = log.purge(log_id(1, 1, 20)).await.expect_err("gives up");
    assert!(err.to_string().contains("did not become durable"), "{err}");
}

#[tokio::test]
async fn a_torn_tail_is_dropped_and_the_rest_kept() {
    let tmp = TempDir::new().expect("tempdir");
    {
        let (mut log, _sm) = open_data(tmp.path());
        log.blocking_append((1..=10).map(|i| put(1, i))).await.expect("append");
    }
    let last = tmp.path().join("log").join(segments(tmp.path()).pop().expect("a segment"));
    // Segments are preallocated (zero-filled): the written data ends at the last non-zero
    // byte (a record never ends in zeros: its checksum and payload come first).
    let bytes = std::fs::read(&last).expect("read the segment");
    let len = bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1) as u64;
    let file = std::fs::OpenOptions::new().write(true).open(&last).expect("open");
    file.set_len(len - 5).expect("tear the last record");
    drop(file);
    let (mut log, _sm) = open_data(tmp.path());
    let got: Vec<u64> = read_log(&mut log).await.iter().map(|e| e.log_id.index).collect();
    assert_eq!(got, (1..=9).collect::<Vec<_>>());
    log.blocking_append([put(1, 10)]).await.expect("the log continues");
}

#[test]
fn another_clusters_or_nodes_directory_is_refused_untouched() {
    let tmp = TempDir::new().expect("tempdir");
    drop(open_data(tmp.path()));
    let before = fingerprint(tmp.path());

    let other_cluster = StorageConfig { cluster_id: "other-cluster".into(), ..config() };
    let err = seam_raft_storage::open(tmp.path(), other_cluster).expect_err("foreign cluster");
    let msg = err.to_string();
    assert!(matches!(err, StorageOpenError::ForeignCluster { .. }), "{msg}");
    assert!(msg.contains(CLUSTER) && msg.contains("other-cluster"), "names both: {msg}");

    let other_node = StorageConfig { node_id: 2, ..config() };
    let err = seam_raft_storage::open(tmp.path(), other_node).expect_err("foreign node");
    let msg = err.to_string();
    assert!(matches!(err, StorageOpenError::ForeignNode { found: 1, expected: 2, .. }), "{msg}");
    assert!(msg.contains("node 1") && msg.contains("node 2"), "names both: {msg}");

    assert_eq!(fingerprint(tmp.path()), before, "nothing was written");
    drop(open_data(tmp.path()));
}

#[test]
fn corrupt_identity_log_or_foreign_content_is_refused_untouched() {
    let tmp = TempDir::new().expect("tempdir");
    let rt = runtime();
    rt.block_on(async {
        let (mut log, _sm) = open_data(tmp.path());
        for i in 1..=400 {
            log.blocking_append([put(1, i)]).await.expect("append");
        }
    });
    assert!(segments(tmp.path()).len() > 2);
    let pristine = fingerprint(tmp.path());

    // A damaged identity.
    let identity = tmp.path().join("IDENTITY");
    std::fs::write(&identity, "format = 1\ncluster_id = \n").expect("damage");
    let before = fingerprint(tmp.path());
    let err = seam_raft_storage::open(tmp.path(), config()).expect_err("corrupt identity");
    assert!(matches!(err, StorageOpenError::CorruptIdentity { .. }), "{err}");
    assert!(err.to_string().contains("IDENTITY"), "{err}");
    assert_eq!(fingerprint(tmp.path()), before);
    std::fs::write(&identity, &pristine["IDENTITY"]).expect("restore");

    // A future format, and format 1 (before results were persisted in pages).
    for found in [9, 1] {
        let ours = format!("format = {FORMAT_VERSION}");
        let text = String::from_utf8(pristine["IDENTITY"].clone())
            .expect("utf8")
            .replace(&ours, &format!("format = {found}"));
        std::fs::write(&identity, text).expect("damage");
        let err = seam_raft_storage::open(tmp.path(), config()).expect_err("other format");
        assert!(
            matches!(err, StorageOpenError::UnsupportedFormat { found: f, supported: FORMAT_VERSION, .. } if f == found),
            "{err}"
        );
        std::fs::write(&identity, &pristine["IDENTITY"]).expect("restore");
    }

    // A damaged record in an older log segment.
    let first = tmp.path().join("log").join(&segments(tmp.path())[0]);
    let mut bytes = std::fs::read(&first).expect("read");
    bytes[100] ^= 0x5a;
    std::fs::write(&first, &bytes).expect("damage");
    let before = fingerprint(tmp.path());
    let err = seam_raft_storage::open(tmp.path(), config()).expect_err("corrupt log");
    let msg = err.to_string();
    assert!(matches!(err, StorageOpenError::CorruptLog { .. }), "{msg}");
    assert!(msg.contains(&segments(tmp.path())[0]) && msg.contains("checksum"), "{msg}");
    assert_eq!(fingerprint(tmp.path()), before, "nothing was repaired or overwritten");
    bytes[100] ^= 0x5a;
    std::fs::write(&first, &bytes).expect("restore");

    // A log directory that lost its segments: starting would forget the vote.
    let log_dir = tmp.path().join("log");
    let moved = tmp.path().join("log-moved");
    std::fs::rename(&log_dir, &moved).expect("move");
    std::fs::create_dir(&log_dir).expect("empty log dir");
    let err = seam_raft_storage::open(tmp.path(), config()).expect_err("empty log");
    assert!(err.to_string().contains("no segments"), "{err}");
    std::fs::remove_dir(&log_dir).expect("rm");
    std::fs::rename(&moved, &log_dir).expect("restore");

    assert_eq!(fingerprint(tmp.path()), pristine);
    rt.block_on(async {
        let (mut log, _sm) = open_data(tmp.path());
        assert_eq!(read_log(&mut log).await.len(), 400, "intact after all refusals");
    });

    // A directory that is not ours at all.
    let stranger = TempDir::new().expect("tempdir");
    std::fs::write(stranger.path().join("notes.txt"), "mine").expect("write");
    let err = seam_raft_storage::open(stranger.path(), config()).expect_err("not a data dir");
    assert!(matches!(err, StorageOpenError::NotADataDir { .. }), "{err}");
    assert!(err.to_string().contains("notes.txt"), "{err}");
    assert_eq!(fingerprint(stranger.path()).len(), 1, "no LOCK or anything else created");
}

#[test]
fn a_directory_is_opened_by_one_store_at_a_time() {
    let tmp = TempDir::new().expect("tempdir");
    let stores = open_data(tmp.path());
    let err = seam_raft_storage::open(tmp.path(), config()).expect_err("locked");
    assert!(matches!(err, StorageOpenError::Locked { .. }), "{err}");
    let (log, sm) = stores;
    drop(log);
    let err = seam_raft_storage::open(tmp.path(), config()).expect_err("still held by the state machine");
    assert!(matches!(err, StorageOpenError::Locked { .. }), "{err}");
    drop(sm);
    drop(open_data(tmp.path()));
}

#[test]
fn invalid_config_is_refused_before_touching_the_disk() {
    let tmp = TempDir::new().expect("tempdir");
    let data = tmp.path().join("data");
    let err = seam_raft_storage::open(&data, StorageConfig { segment_bytes_max: 1, ..config() })
        .expect_err("invalid");
    assert!(err.to_string().contains("segment_bytes_max"), "{err}");
    assert!(!data.exists());
}
