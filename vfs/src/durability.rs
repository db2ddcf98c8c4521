//! `Durability`: how long a commit waits, one type for the VFS and the facade over it (its
//! file backings give the same two levels with `PRAGMA synchronous`). Compiled in every
//! build, with or without the VFS.

/// How long a commit waits before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// A commit returns once it is durable: through the VFS, after a flush (shared by
    /// concurrent commits); in the facade's plain files, with `synchronous=FULL`.
    #[default]
    Full,
    /// A commit is never torn, but may be lost if the machine fails soon after it: through
    /// the VFS it returns once its atomic batch is applied and the next flush (within
    /// 500 ms) makes it durable, while commits through the rollback journal stay fully
    /// durable; in the facade's plain files, `synchronous=NORMAL`.
    Relaxed,
}

impl Durability {
    /// The name of this mode (the value of `PRAGMA shoal_durability`).
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Full => "full",
            Durability::Relaxed => "relaxed",
        }
    }
}
