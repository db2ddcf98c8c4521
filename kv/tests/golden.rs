//! Golden bytes of the stored format: every kind of key and record, as this build writes
//! them, checked against fixture files written by an earlier build (`tests/golden/`).
//!
//! Two directions are checked: encoding today's values gives the fixture bytes (so a
//! write format change fails here), and decoding the fixture bytes gives back the values
//! (so a store written in that format stays readable).

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::path::PathBuf;

use bytes::Bytes;
use shoal_kv::raw::{checksum, keys, records};
use shoal_kv::{CatalogEntry, ChunkNo, DbId, EntryKind, FileKind, FileMeta, StageRecord};

/// What every failure says: the rule for changing the format.
const RULE: &str = "the stored format changed. A format change must update the fixtures \
    in kv/tests/golden/ in the same commit, and give stores of the old format a reader or \
    a clear \"made by an older shoal\" error";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd hex {text:?}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2).unwrap(), 16).unwrap())
        .collect()
}

/// The fixture `file`: one `name hex` pair a line, `#` comments.
fn fixture(file: &str) -> Vec<(String, Vec<u8>)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, bytes) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (name.to_owned(), unhex(bytes.trim()))
        })
        .collect()
}

/// Compares what this build encodes with the fixture, entry by entry and in order.
fn check(file: &str, current: &[(String, Vec<u8>)]) {
    let golden: Vec<_> = fixture(file)
        .into_iter()
        .filter(|(name, _)| !OLDER.contains(&name.as_str()))
        .collect();
    let render = |entries: &[(String, Vec<u8>)]| {
        entries
            .iter()
            .map(|(n, b)| format!("{n} {}\n", hex(b)))
            .collect::<String>()
    };
    let names =
        |entries: &[(String, Vec<u8>)]| entries.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&golden),
        names(current),
        "{file}: the fixture lists other entries than the test; this build writes:\n{}",
        render(current)
    );
    for ((name, want), (_, got)) in golden.iter().zip(current) {
        assert_eq!(
            hex(got),
            hex(want),
            "{file}: {name}: {RULE}. This build writes:\n{}",
            render(current)
        );
    }
}

const IDS: [DbId; 3] = [DbId(1), DbId(0x0102_0304_0506_0708), DbId(u64::MAX)];
const CHUNKS: [ChunkNo; 3] = [ChunkNo(0), ChunkNo(1), ChunkNo(u32::MAX)];

fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Main => "main",
        FileKind::MainJournal => "journal",
        FileKind::SuperJournal => "super_journal",
        FileKind::Staged => "staged",
    }
}

fn current_keys() -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        (
            "store_version".to_owned(),
            keys::store_version_key().to_vec(),
        ),
        ("next_db_id".to_owned(), keys::next_db_id_key().to_vec()),
        ("catalog.actor-1".to_owned(), keys::catalog_key(b"actor-1")),
        (
            "catalog.path_utf8".to_owned(),
            keys::catalog_key("/srv/a b/ü.db".as_bytes()),
        ),
    ];
    for id in IDS {
        for kind in FileKind::ALL {
            let at = format!("{}.{:x}", kind_name(kind), id.0);
            out.push((format!("meta.{at}"), keys::meta_key(id, kind).to_vec()));
            for no in CHUNKS {
                out.push((
                    format!("chunk.{at}.{:x}", no.0),
                    keys::chunk_key(id, kind, no).to_vec(),
                ));
            }
        }
        out.push((format!("lease.{:x}", id.0), keys::lease_key(id).to_vec()));
        let at = format!("{:x}", id.0);
        out.push((format!("commit.{at}.2a"), keys::commit_key(id, 42).to_vec()));
        out.push((
            format!("undo.{at}.3.2a"),
            keys::undo_key(id, ChunkNo(3), 42).to_vec(),
        ));
        out.push((
            format!("pin.{at}.before-deploy"),
            keys::pin_key(id, b"before-deploy"),
        ));
        out.push((format!("origin.{at}"), keys::origin_key(id).to_vec()));
        out.push((
            format!("child.{at}.9"),
            keys::child_key(id, DbId(9)).to_vec(),
        ));
    }
    out
}

#[test]
fn keys_are_the_golden_bytes() {
    check("keys.hex", &current_keys());
}

#[test]
fn keys_decode_from_the_golden_bytes() {
    for (name, bytes) in fixture("keys.hex") {
        let decoded = keys::Key::decode(&bytes)
            .unwrap_or_else(|e| panic!("keys.hex: {name} no longer decodes ({e}): {RULE}"));
        assert_eq!(decoded.encode(), bytes, "keys.hex: {name}: {RULE}");
    }
}

/// Sample records: each with its key, its value and a decoder that must give it back.
fn sample_meta() -> FileMeta {
    FileMeta {
        chunk_size: 4096,
        size: 3 * 4096 - 100,
        generation: 0x0a0b_0c0d,
    }
}

const DB: DbId = DbId(7);

fn chunk_payload() -> Vec<u8> {
    (0u8..40).collect()
}

fn current_records() -> Vec<(String, Vec<u8>)> {
    let chunk_key = keys::chunk_key(DB, FileKind::Main, ChunkNo(2));
    vec![
        (
            "store_version".to_owned(),
            records::encode_store_version().to_vec(),
        ),
        (
            "next_db_id.42".to_owned(),
            records::encode_u64(&keys::next_db_id_key(), 42).to_vec(),
        ),
        (
            "catalog.actor-1.database".to_owned(),
            records::encode_entry(
                &CatalogEntry {
                    id: DB,
                    kind: EntryKind::Database,
                },
                b"actor-1",
            )
            .to_vec(),
        ),
        (
            "catalog.actor-1-mj0.super_journal".to_owned(),
            records::encode_entry(
                &CatalogEntry {
                    id: DbId(8),
                    kind: EntryKind::SuperJournal,
                },
                b"actor-1-mj0",
            )
            .to_vec(),
        ),
        (
            "meta.main".to_owned(),
            records::encode_meta(&sample_meta(), DB, FileKind::Main).to_vec(),
        ),
        (
            "meta.super_journal.empty".to_owned(),
            records::encode_meta(&FileMeta::EMPTY, DbId(8), FileKind::SuperJournal).to_vec(),
        ),
        (
            "chunk.main.2".to_owned(),
            checksum::seal(&chunk_key, chunk_payload()).to_vec(),
        ),
        (
            "stage.staging".to_owned(),
            records::encode_stage_record(&StageRecord::Staging, DB).to_vec(),
        ),
        (
            "stage.committed".to_owned(),
            records::encode_stage_record(&StageRecord::Committed(sample_meta()), DB).to_vec(),
        ),
        (
            "lease.held".to_owned(),
            records::encode_lease(&sample_lease(), DB).to_vec(),
        ),
        (
            "commit.2a".to_owned(),
            records::encode_commit(&sample_commit(), DB, 42).to_vec(),
        ),
        (
            "undo.3.2a".to_owned(),
            records::seal_undo(&keys::undo_key(DB, ChunkNo(3), 42), &chunk_payload()).to_vec(),
        ),
        (
            "undo.3.2a.lz4".to_owned(),
            records::seal_undo(&keys::undo_key(DB, ChunkNo(3), 42), &[0u8; 4096]).to_vec(),
        ),
        (
            "pin.before-deploy.2a".to_owned(),
            records::encode_u64(&keys::pin_key(DB, b"before-deploy"), 42).to_vec(),
        ),
        (
            "origin.db8.2a".to_owned(),
            records::encode_origin(&sample_origin(), DB).to_vec(),
        ),
    ]
}

fn sample_commit() -> records::CommitRecord {
    records::CommitRecord {
        time_ms: 1_780_000_000_123,
        size: 3 * 4096,
        chunk_size: 4096,
    }
}

fn sample_origin() -> records::OriginRecord {
    records::OriginRecord {
        parent: DbId(8),
        version: 42,
    }
}

fn sample_lease() -> records::LeaseRecord {
    records::LeaseRecord {
        owner: "host-a:4242:9f".to_owned(),
        generation: 7,
        expires_ms: 1_780_000_000_123,
    }
}

/// Records of older formats that this build still reads (it writes none of them).
const OLDER: &[&str] = &["store_version.v1", "store_version.v2"];

#[test]
fn records_are_the_golden_bytes() {
    check("records.hex", &current_records());
}

#[test]
fn records_decode_from_the_golden_bytes() {
    let golden = fixture("records.hex");
    let value = |name: &str| {
        let (_, bytes) = golden
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("records.hex has no {name}"));
        Bytes::from(bytes.clone())
    };
    let readable = |name: &str, result: shoal_kv::Result<bool>| match result {
        Ok(true) => {}
        Ok(false) => panic!("records.hex: {name} reads back as another value: {RULE}"),
        Err(e) => panic!("records.hex: {name} no longer reads ({e}): {RULE}"),
    };
    readable(
        "store_version",
        records::check_store_version(value("store_version")).map(|v| v == keys::STORE_VERSION),
    );
    // A store of format 1 (before the staging area) is read, and marked 2 when opened
    // for writing (shared.rs `open_mode`).
    readable(
        "store_version.v1",
        records::check_store_version(value("store_version.v1")).map(|v| v == 1),
    );
    // A store of format 2 (before history) is read as it is: it has no history keys.
    readable(
        "store_version.v2",
        records::check_store_version(value("store_version.v2")).map(|v| v == 2),
    );
    readable(
        "commit.2a",
        records::decode_commit(DB, 42, value("commit.2a")).map(|r| r == sample_commit()),
    );
    readable(
        "undo.3.2a",
        records::open_undo(&keys::undo_key(DB, ChunkNo(3), 42), value("undo.3.2a"))
            .map(|p| p[..] == chunk_payload()[..]),
    );
    readable(
        "undo.3.2a.lz4",
        records::open_undo(&keys::undo_key(DB, ChunkNo(3), 42), value("undo.3.2a.lz4"))
            .map(|p| p[..] == [0u8; 4096][..]),
    );
    readable(
        "pin.before-deploy.2a",
        records::decode_u64(
            &keys::pin_key(DB, b"before-deploy"),
            value("pin.before-deploy.2a"),
        )
        .map(|v| v == 42),
    );
    readable(
        "origin.db8.2a",
        records::decode_origin(DB, value("origin.db8.2a")).map(|r| r == sample_origin()),
    );
    readable(
        "lease.held",
        records::decode_lease(DB, value("lease.held")).map(|l| l == sample_lease()),
    );
    readable(
        "stage.staging",
        records::decode_stage_record(DB, value("stage.staging")).map(|r| r == StageRecord::Staging),
    );
    readable(
        "stage.committed",
        records::decode_stage_record(DB, value("stage.committed"))
            .map(|r| r == StageRecord::Committed(sample_meta())),
    );
    readable(
        "next_db_id.42",
        records::decode_u64(&keys::next_db_id_key(), value("next_db_id.42")).map(|n| n == 42),
    );
    readable(
        "catalog.actor-1.database",
        records::decode_entry(b"actor-1", value("catalog.actor-1.database")).map(|e| {
            e == CatalogEntry {
                id: DB,
                kind: EntryKind::Database,
            }
        }),
    );
    readable(
        "catalog.actor-1-mj0.super_journal",
        records::decode_entry(b"actor-1-mj0", value("catalog.actor-1-mj0.super_journal")).map(
            |e| {
                e == CatalogEntry {
                    id: DbId(8),
                    kind: EntryKind::SuperJournal,
                }
            },
        ),
    );
    readable(
        "meta.main",
        records::decode_meta(DB, FileKind::Main, value("meta.main")).map(|m| m == sample_meta()),
    );
    readable(
        "meta.super_journal.empty",
        records::decode_meta(
            DbId(8),
            FileKind::SuperJournal,
            value("meta.super_journal.empty"),
        )
        .map(|m| m == FileMeta::EMPTY),
    );
    readable(
        "chunk.main.2",
        checksum::open(
            &keys::chunk_key(DB, FileKind::Main, ChunkNo(2)),
            value("chunk.main.2"),
        )
        .map(|p| p[..] == chunk_payload()[..]),
    );
}
