//! shoal: many small SQLite databases, one per actor, stored as pages in one shared
//! embedded key-value store, behind one process-wide memory budget.
//!
//! - [`Store::open`] opens a store directory with a [`Config`] (the backing and the
//!   memory budget);
//! - [`Store::actor`] / [`Store::with_actor`] wake an actor (open its connection, or take
//!   the idle one) and hand out a [`rusqlite::Connection`] tuned for actors; idle actors
//!   beyond the budget are put to sleep (closed), least recently used first;
//! - [`Store::open_actor`] gives a connection the caller owns outright;
//! - list, delete, stats, export to a plain SQLite file, import from one, check.
//!
//! With the default feature `kv-vfs` actors live in the shared key-value store through
//! the shoal VFS ([`Backing::Kv`]); without it, and with [`Backing::Files`] or
//! [`Backing::FilesTuned`] in any build, each actor is one plain SQLite file.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod error;
pub mod memory;
mod names;
mod pool;
mod reset;
mod store;
mod transfer;

pub use config::{ActorTuning, Backing, Config, Durability, KvEngine};
pub use error::{Error, Result};
pub use memory::MemoryReport;
pub use names::{MAX_ACTOR_NAME, validate_actor_name};
pub use store::{Actor, ActorStats, CheckReport, Store};

/// Re-exported so callers name the same rusqlite the store hands out.
pub use rusqlite;
