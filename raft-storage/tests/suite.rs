//! openraft's own storage conformance suite, run against Seam's store.

use openraft::testing::StoreBuilder;
use openraft::testing::Suite;
use openraft::AnyError;
use openraft::StorageIOError;
use seam_raft_storage::LogStore;
use seam_raft_storage::StateMachineStore;
use seam_raft_storage::StorageConfig;
use seam_raft_storage::StorageError;
use seam_raft_storage::TypeConfig;
use tempfile::TempDir;

/// Opens a fresh data directory per test; the `TempDir` guard removes it afterwards.
struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let tmp = TempDir::new().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let (log, sm) = seam_raft_storage::open(
            tmp.path().join("data"),
            StorageConfig { sm_flush_every_ms: 10, ..StorageConfig::new("suite", 0) },
        )
        .map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        Ok((tmp, log, sm))
    }
}

/// About 8 s, most of it the suite's own 1 s sleeps after each purge.
#[test]
fn openraft_conformance_suite() {
    Suite::test_all(Builder).expect("openraft's storage suite passes");
}
