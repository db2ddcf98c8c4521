//! shoal-testkit: what shoal's tests and fuzz targets share, kept out of the libraries so
//! that they carry no test plumbing. Not published; a dev-dependency of the workspace's
//! packages and a dependency of the cargo-fuzz targets in `fuzz/`.
//!
//! - [`kv_ops`]: the body of the `kv_ops` fuzz target (shoal-kv's fjall backend and `Kv`
//!   layer against `MemKv`), through shoal-kv's public API only;
//! - [`kv_raw`]: the raw `KvStore` operation language, shared by `kv_ops` and the stable
//!   model test, and the lockstep check of a store against `MemKv`;
//! - [`sql`] (feature `vfs`): the SQL step language, shared by the `sql_diff` fuzz target
//!   and the stable differential test, and the body of `sql_diff`;
//! - `pg` (feature `postgres`): a PostgreSQL schema of its own per test;
//! - [`rows`]: query results rendered as text, the one form rows are compared in;
//! - [`catalog`]: the names a store's catalog holds;
//! - [`corpus`]: the inputs the stable tests run the fuzz bodies over;
//! - [`scratch`]: where the fuzz bodies keep their files, and the removal of those left
//!   by processes that have exited.

pub mod catalog;
pub mod corpus;
pub mod kv_ops;
pub mod kv_raw;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod rows;
pub mod scratch;
#[cfg(feature = "vfs")]
pub mod sql;
