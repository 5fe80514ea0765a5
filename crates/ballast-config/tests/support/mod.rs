//! Test support shared by this crate's integration tests.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

use ballast_config::SqlStore;

/// A database file in a fresh temp directory, removed on drop.
pub struct TempDb(PathBuf);

impl TempDb {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ballast-config-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    pub async fn open(&self) -> SqlStore {
        SqlStore::open_sqlite(&self.0.join("config.db"))
            .await
            .expect("open")
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh store of each kind: SQLite in a temp file (the guard keeps it), or PostgreSQL.
pub async fn sqlite() -> (SqlStore, String, TempDb) {
    let db = TempDb::new();
    let url = format!("sqlite://{}", db.0.join("config.db").display());
    (SqlStore::connect(&url).await.expect("open"), url, db)
}

pub async fn postgres() -> (SqlStore, String) {
    let url = ballast_testkit::postgres::database().await;
    (SqlStore::connect(&url).await.expect("connect"), url)
}
