//! openraft's own storage test suite against kaon's redb-backed stores.

use kaon_log::{LogStore, StateMachineStore, TypeConfig};
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use tempfile::TempDir;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RedbBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let err = |e: &dyn std::fmt::Display| StorageError::read(TypeConfig::err_from_string(e));
        let dir = tempfile::tempdir().map_err(|e| err(&e))?;
        let log = LogStore::open(dir.path()).map_err(|e| err(&e))?;
        let sm = StateMachineStore::open(dir.path()).map_err(|e| err(&e))?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() {
    Suite::test_all(RedbBuilder)
        .await
        .expect("openraft storage suite");
}
