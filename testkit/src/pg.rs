//! A PostgreSQL schema of its own for one test (feature `postgres`).
//!
//! Tests that need PostgreSQL read its URL from `SHOAL_PG_URL`, which
//! `scripts/with-postgres` sets after starting a throwaway server (CI runs the test
//! command under it). Each test gets a fresh schema, named after it and the process, so
//! tests running in parallel never see each other's tables; the schema is dropped when
//! the [`PgSchema`] is. Without `SHOAL_PG_URL` a test is skipped with a message, unless
//! `CI` is set: then it fails, so CI can never pass by skipping it.

use postgres::{Client, NoTls};

/// A fresh schema on the test server, dropped with the value.
#[derive(Debug)]
pub struct PgSchema {
    base: String,
    name: String,
    /// A URL whose connections use the schema (`search_path`).
    pub url: String,
}

/// The server's URL, or `None` (with a message) when tests without it are skipped.
pub fn server_url(test: &str) -> Option<String> {
    match std::env::var("SHOAL_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{test}: SHOAL_PG_URL is not set; run the tests under scripts/with-postgres")
        }
        _ => {
            eprintln!("{test}: skipped, SHOAL_PG_URL is not set (see scripts/with-postgres)");
            None
        }
    }
}

/// `url` with its connections' `search_path` set to `schema`.
pub fn url_with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-csearch_path%3D{schema}")
}

impl PgSchema {
    /// A new schema for test `test`, or `None` when PostgreSQL tests are skipped.
    pub fn new(test: &str) -> Option<PgSchema> {
        let base = server_url(test)?;
        let tag: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(30)
            .collect();
        let name = format!("t_{tag}_{}_{:x}", std::process::id(), fastrand::u32(..));
        let mut client = Client::connect(&base, NoTls)
            .unwrap_or_else(|e| panic!("{test}: cannot reach PostgreSQL at {base}: {e}"));
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .unwrap_or_else(|e| panic!("{test}: CREATE SCHEMA {name}: {e}"));
        let url = url_with_schema(&base, &name);
        Some(PgSchema { base, name, url })
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A client on the schema, for tests that look at (or alter) the table directly.
    pub fn client(&self) -> Client {
        Client::connect(&self.url, NoTls).unwrap_or_else(|e| panic!("connect {}: {e}", self.url))
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Ok(mut client) = Client::connect(&self.base, NoTls) {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}
