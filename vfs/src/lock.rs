//! SQLite's lock levels between the connections of one process, with the unix VFS's
//! semantics (`unixLock`/`posixUnlock` in os_unix.c, whose process-local part this is).
//!
//! One [`LockTable`] per database (kept in its inode) records the strongest level any
//! handle holds and how many handles hold at least SHARED; each handle records its own
//! level. The rules, as in os_unix.c:
//! - a handle may not move past SHARED, or even take SHARED, while another handle holds
//!   PENDING or more; nor past SHARED while another holds RESERVED;
//! - SHARED is granted freely while the strongest level is SHARED or RESERVED;
//! - EXCLUSIVE waits for every other SHARED holder; a handle refused EXCLUSIVE keeps
//!   PENDING, which stops new readers so the writer cannot starve;
//! - refusals are `false` here and SQLITE_BUSY to SQLite, whose busy handler retries.

/// A lock level (the values are SQLite's `SQLITE_LOCK_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum LockLevel {
    /// No lock.
    #[default]
    None = 0,
    /// Reading.
    Shared = 1,
    /// About to write; other connections may still read.
    Reserved = 2,
    /// Waiting for readers to leave before writing; no new reader may start.
    Pending = 3,
    /// Writing.
    Exclusive = 4,
}

impl LockLevel {
    pub(crate) fn from_sqlite(level: i32) -> Option<LockLevel> {
        Some(match level {
            0 => LockLevel::None,
            1 => LockLevel::Shared,
            2 => LockLevel::Reserved,
            3 => LockLevel::Pending,
            4 => LockLevel::Exclusive,
            _ => return None,
        })
    }
}

/// The process-wide lock state of one database.
#[derive(Debug, Default)]
pub(crate) struct LockTable {
    /// The strongest level any handle holds.
    level: LockLevel,
    /// Handles holding SHARED or more.
    shared: u32,
}

impl LockTable {
    /// Raises `held` (one handle's level) to `want`; `false` means SQLITE_BUSY.
    pub(crate) fn lock(&mut self, held: &mut LockLevel, want: LockLevel) -> bool {
        if *held >= want {
            return true;
        }
        if *held != self.level && (self.level >= LockLevel::Pending || want > LockLevel::Shared) {
            return false;
        }
        if want == LockLevel::Shared {
            // Here the table is NONE, SHARED or RESERVED (stronger levels returned above).
            self.shared += 1;
            self.level = self.level.max(LockLevel::Shared);
            *held = LockLevel::Shared;
            return true;
        }
        if want == LockLevel::Exclusive && self.shared > 1 {
            *held = LockLevel::Pending;
            self.level = LockLevel::Pending;
            return false;
        }
        *held = want;
        self.level = want;
        true
    }

    /// Lowers `held` to `want` (NONE or SHARED).
    pub(crate) fn unlock(&mut self, held: &mut LockLevel, want: LockLevel) {
        if *held <= want {
            return;
        }
        if *held > LockLevel::Shared {
            self.level = LockLevel::Shared;
        }
        if want == LockLevel::None {
            self.shared = self.shared.saturating_sub(1);
            if self.shared == 0 {
                self.level = LockLevel::None;
            }
        }
        *held = want;
    }

    /// Whether no handle holds any lock: nothing reads or writes the database.
    pub(crate) fn idle(&self) -> bool {
        self.level == LockLevel::None
    }

    /// Whether some handle holds RESERVED or more (xCheckReservedLock).
    pub(crate) fn reserved(&self) -> bool {
        self.level > LockLevel::Shared
    }
}

#[cfg(test)]
mod tests {
    use super::LockLevel::*;
    use super::*;

    #[test]
    fn readers_share_and_one_writer_reserves() {
        let mut t = LockTable::default();
        let (mut a, mut b) = (None, None);
        assert!(t.lock(&mut a, Shared));
        assert!(t.lock(&mut b, Shared));
        assert!(t.lock(&mut a, Reserved));
        assert!(t.reserved());
        assert!(!t.lock(&mut b, Reserved), "a second RESERVED must be busy");
        assert!(
            !t.lock(&mut a, Exclusive),
            "EXCLUSIVE waits for the other reader"
        );
        assert_eq!(a, Pending);
        let mut c = None;
        assert!(!t.lock(&mut c, Shared), "PENDING keeps new readers out");
        t.unlock(&mut b, None);
        assert!(t.lock(&mut a, Exclusive));
        assert!(!t.lock(&mut c, Shared));
        t.unlock(&mut a, Shared);
        assert!(!t.reserved());
        assert!(t.lock(&mut c, Shared));
        t.unlock(&mut a, None);
        t.unlock(&mut c, None);
        assert_eq!((t.level, t.shared), (None, 0));
    }

    #[test]
    fn a_lone_reader_upgrades_straight_to_exclusive() {
        let mut t = LockTable::default();
        let mut a = None;
        assert!(t.lock(&mut a, Shared));
        assert!(t.lock(&mut a, Reserved));
        assert!(t.lock(&mut a, Exclusive));
        assert_eq!(a, Exclusive);
        let mut b = None;
        assert!(!t.lock(&mut b, Shared));
        t.unlock(&mut a, None);
        assert!(t.lock(&mut b, Shared));
    }

    #[test]
    fn relocking_at_a_held_level_is_free() {
        let mut t = LockTable::default();
        let mut a = None;
        assert!(t.lock(&mut a, Shared));
        assert!(t.lock(&mut a, Shared));
        assert_eq!(t.shared, 1);
        t.unlock(&mut a, Shared);
        assert_eq!(a, Shared);
        t.unlock(&mut a, None);
        t.unlock(&mut a, None);
        assert_eq!(t.shared, 0);
    }
}
