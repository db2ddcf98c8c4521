//! What a store's catalog holds, as tests compare it.

use shoal_kv::Kv;

/// Every name in the catalog, databases and super-journals alike, in name order; panics
/// if the catalog cannot be read.
pub fn names(kv: &Kv) -> Vec<String> {
    match kv.list() {
        Ok(entries) => entries.into_iter().map(|(name, _)| name).collect(),
        Err(e) => panic!("listing the catalog: {e}"),
    }
}
