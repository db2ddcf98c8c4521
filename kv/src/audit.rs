//! [`Kv::audit`]: reads back every stored record of one database and reports what is
//! wrong with it, without stopping at the first problem.
//!
//! It checks what the format promises: every value opens under its key's checksum,
//! every file with chunks has metadata, chunk numbers run from 0 without a gap up to
//! what the file size implies, and each chunk is exactly as long as the size and chunk
//! size say (the last one may be short). A database entry must have its main file's
//! metadata.

use crate::checksum;
use crate::error::Result;
use crate::keys::{self, FileKind};
use crate::records::{EntryKind, FileMeta, chunk_len};
use crate::shared::Kv;

/// The result of [`Kv::audit`]: what was checked and what was wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Audit {
    /// Records read (metadata and chunks).
    pub records: u64,
    /// Chunks whose checksum verified.
    pub chunks: u64,
    /// Stored bytes read.
    pub bytes: u64,
    /// Every problem found, described; empty when the database is sound.
    pub problems: Vec<String>,
    /// Records in the staging area: the staged pages of a large transaction in progress,
    /// or left by one a crash interrupted (removed, or moved into place if it had
    /// committed, when the database is next opened). Their checksums are verified.
    pub staged: u64,
    /// Pages of a fork read from its origin (it has not written them).
    pub inherited: u64,
}

impl Kv {
    /// Verifies every stored record of database `name`: checksums, chunk numbering and
    /// lengths against the metadata, no chunk missing inside a file. `None` if there is
    /// no such entry.
    pub fn audit(&self, name: &str) -> Result<Option<Audit>> {
        let Some(entry) = self.lookup(name)? else {
            return Ok(None);
        };
        let mut audit = Audit::default();
        for kind in FileKind::ALL {
            let range = keys::file_range(entry.id, kind);
            if kind == FileKind::Staged {
                self.audit_staged(entry.id, range, &mut audit)?;
                continue;
            }
            let mut meta = None;
            let mut expected_next = 0u64;
            for item in self.scan(range)? {
                let (key, value) = item?;
                audit.records += 1;
                audit.bytes += value.len() as u64;
                match keys::Key::decode(&key) {
                    Ok(keys::Key::Meta(..)) => match FileMeta::decode(entry.id, kind, value) {
                        Ok(m) => meta = Some(m),
                        Err(e) => audit.problems.push(format!("{kind} metadata: {e}")),
                    },
                    Ok(keys::Key::Chunk(_, _, no)) => {
                        let Some(m) = meta else {
                            audit
                                .problems
                                .push(format!("{kind} chunk {} without metadata", no.0));
                            continue;
                        };
                        let cs = u64::from(m.chunk_size.max(1));
                        let c = u64::from(no.0);
                        if c != expected_next {
                            self.missing(entry.id, kind, expected_next..c, &mut audit)?;
                        }
                        expected_next = c + 1;
                        match checksum::open(&key, value) {
                            Ok(data) => {
                                audit.chunks += 1;
                                let want = chunk_len(m.size, cs, c);
                                if data.len() as u64 != want {
                                    audit.problems.push(format!(
                                        "{kind} chunk {c} is {} bytes where the size implies {want}",
                                        data.len()
                                    ));
                                }
                            }
                            Err(e) => audit.problems.push(format!("{kind} chunk {c}: {e}")),
                        }
                    }
                    Ok(other) => audit
                        .problems
                        .push(format!("unexpected key {other} in the file range")),
                    Err(e) => audit.problems.push(e.to_string()),
                }
            }
            if let Some(m) = meta {
                let want = m.size.div_ceil(u64::from(m.chunk_size.max(1)));
                if expected_next < want {
                    self.missing(entry.id, kind, expected_next..want, &mut audit)?;
                }
            } else if kind == FileKind::Main && entry.kind == EntryKind::Database {
                audit
                    .problems
                    .push("the database's metadata is missing".to_owned());
            }
        }
        Ok(Some(audit))
    }

    /// Chunks `range` of a file are not stored: a problem, unless the file is a fork's
    /// main file and its origin holds each of them (see `history.rs`).
    fn missing(
        &self,
        id: crate::keys::DbId,
        kind: FileKind,
        range: std::ops::Range<u64>,
        audit: &mut Audit,
    ) -> Result<()> {
        if kind == FileKind::Main {
            let mut all = true;
            for c in range.clone() {
                let no = crate::keys::ChunkNo(u32::try_from(c).unwrap_or(u32::MAX));
                if self.inherited(id, no)?.is_some() {
                    audit.inherited += 1;
                } else {
                    all = false;
                }
            }
            if all {
                return Ok(());
            }
        }
        audit.problems.push(format!(
            "{kind} chunks {}..{} are missing",
            range.start, range.end
        ));
        Ok(())
    }

    /// The staging area: a record that decodes and chunks that verify; numbering and
    /// lengths are not the main file's rules (staged pages are sparse).
    fn audit_staged(
        &self,
        id: crate::keys::DbId,
        range: keys::KeyRange,
        audit: &mut Audit,
    ) -> Result<()> {
        for item in self.scan(range)? {
            let (key, value) = item?;
            audit.records += 1;
            audit.staged += 1;
            audit.bytes += value.len() as u64;
            match keys::Key::decode(&key) {
                Ok(keys::Key::Meta(..)) => {
                    if let Err(e) = crate::records::StageRecord::decode(id, value) {
                        audit.problems.push(format!("staging record: {e}"));
                    }
                }
                Ok(keys::Key::Chunk(_, _, no)) => match checksum::open(&key, value) {
                    Ok(_) => audit.chunks += 1,
                    Err(e) => audit.problems.push(format!("staged chunk {}: {e}", no.0)),
                },
                Ok(other) => audit
                    .problems
                    .push(format!("unexpected key {other} in the staging range")),
                Err(e) => audit.problems.push(e.to_string()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::keys::ChunkNo;
    use crate::mem::MemKv;
    use crate::store::Batch;

    #[test]
    fn a_sound_database_has_no_problems_and_damage_is_each_reported() {
        let kv = Kv::open(Arc::new(MemKv::new())).unwrap();
        assert_eq!(kv.audit("absent").unwrap(), None);
        let e = kv.create("a", EntryKind::Database).unwrap();
        let before = kv.read_meta(e.id, FileKind::Main).unwrap();
        let mut w = kv.file_write(e.id, FileKind::Main);
        for c in 0..3 {
            w.put_chunk(ChunkNo(c), vec![1; 16]);
        }
        let meta = FileMeta {
            chunk_size: 16,
            size: 40,
            generation: 1,
        };
        w.set_meta(&meta, before.as_ref());
        w.commit().unwrap();
        let audit = kv.audit("a").unwrap().unwrap();
        assert_eq!((audit.records, audit.chunks), (4, 3));
        assert_eq!(
            audit.problems,
            vec!["main chunk 2 is 16 bytes where the size implies 8"]
        );

        let mut b = Batch::new();
        b.delete(keys::chunk_key(e.id, FileKind::Main, ChunkNo(1)).to_vec())
            .put(
                keys::chunk_key(e.id, FileKind::Main, ChunkNo(2)).to_vec(),
                Bytes::from_static(b"not sealed"),
            );
        kv.apply(b).unwrap();
        let problems = kv.audit("a").unwrap().unwrap().problems;
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0], "main chunks 1..2 are missing");
        assert!(problems[1].starts_with("main chunk 2: "), "{problems:?}");
    }
}
