//! The two small page sets a stored-file handle keeps for xFetch.
//!
//! - [`Lent`]: buffers lent to SQLite by xFetch, kept alive until xUnfetch. SQLite holds
//!   a handful at a time (one per b-tree level of each open cursor), so a short vector
//!   searched by address beats a hash map.
//! - [`Fetched`]: pages fetched while the handle holds its lock, direct-mapped by chunk
//!   number. The pager does not cache pages it got through xFetch, so a join or an index
//!   probe asks for the same interior pages again and again; no other handle can change
//!   them while this one holds a lock, and the handle clears the set on its own writes
//!   and when its lock drops to NONE (freeing the slots, so an idle connection holds
//!   nothing).

use bytes::Bytes;

/// Buffers lent to SQLite, by address, with how many times each is lent.
#[derive(Debug, Default)]
pub(crate) struct Lent {
    pages: Vec<(usize, Bytes, u32)>,
}

impl Lent {
    /// Keeps `page` alive until a matching [`Lent::give_back`]; returns its address.
    pub(crate) fn lend(&mut self, page: Bytes) -> *const u8 {
        let ptr = page.as_ptr();
        match self.pages.iter_mut().find(|(p, _, _)| *p == ptr.addr()) {
            Some((_, _, n)) => *n += 1,
            None => self.pages.push((ptr.addr(), page, 1)),
        }
        ptr
    }

    /// Ends one lend of the buffer at `addr` (unknown addresses are ignored).
    pub(crate) fn give_back(&mut self, addr: usize) {
        let Some(i) = self.pages.iter().position(|(p, _, _)| *p == addr) else {
            return;
        };
        if let Some((_, _, n)) = self.pages.get_mut(i) {
            *n -= 1;
            if *n == 0 {
                self.pages.swap_remove(i);
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.pages = Vec::new();
    }
}

const SLOTS: usize = 128;

/// Verified pages by chunk number, direct-mapped into [`SLOTS`] slots.
#[derive(Debug, Default)]
pub(crate) struct Fetched {
    slots: Vec<Option<(u32, Bytes)>>,
}

impl Fetched {
    fn slot(chunk: u32) -> usize {
        usize::try_from(chunk).unwrap_or(0) % SLOTS
    }

    pub(crate) fn get(&self, chunk: u32) -> Option<&Bytes> {
        match self.slots.get(Fetched::slot(chunk)) {
            Some(Some((c, page))) if *c == chunk => Some(page),
            _ => None,
        }
    }

    pub(crate) fn insert(&mut self, chunk: u32, page: Bytes) {
        if self.slots.is_empty() {
            self.slots.resize(SLOTS, None);
        }
        if let Some(slot) = self.slots.get_mut(Fetched::slot(chunk)) {
            *slot = Some((chunk, page));
        }
    }

    /// Forgets every page and frees the slots.
    pub(crate) fn clear(&mut self) {
        if !self.slots.is_empty() {
            self.slots = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_lent_twice_lives_until_both_come_back() {
        let mut lent = Lent::default();
        let page = Bytes::from(vec![1u8; 64]);
        let a = lent.lend(page.clone());
        let b = lent.lend(page.clone());
        assert_eq!(a, b);
        lent.give_back(a.addr());
        assert_eq!(lent.pages.len(), 1);
        lent.give_back(b.addr());
        assert!(lent.pages.is_empty());
        lent.give_back(12345);
    }

    #[test]
    fn fetched_pages_collide_by_slot_and_clear_frees_them() {
        let mut f = Fetched::default();
        f.insert(3, Bytes::from_static(b"three"));
        f.insert(3 + SLOTS as u32, Bytes::from_static(b"other"));
        assert!(f.get(3).is_none());
        assert_eq!(&f.get(3 + SLOTS as u32).unwrap()[..], b"other");
        f.clear();
        assert!(f.get(3 + SLOTS as u32).is_none());
        assert_eq!(f.slots.capacity(), 0);
    }
}
