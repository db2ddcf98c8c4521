//! shoal: many small SQLite databases, one per actor, stored as pages in one shared
//! embedded key-value store.
