//! Damaged engine files, through the public API: a flipped bit, a zeroed block or a
//! truncation anywhere in a store's fjall or sled files makes `Store::open` or the first
//! read fail with an error. Never a panic (it used to be one in 12 of 40 trials with
//! sled), never a hang, never other data than was written. Positions come from a fixed
//! seed, so a failure replays.
#![cfg(feature = "kv-vfs")]
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use shoal::{Backing, Config, KvEngine, Store};

/// Trials per engine.
const TRIALS: u64 = 36;

/// How long one damaged store may take to open and be read.
const TRIAL_LIMIT: Duration = Duration::from_secs(60);

/// Rows of the one actor, each with a 4000-byte blob: enough that fjall writes segments
/// (its memtable holds 2 MiB here), not only its journal.
const ROWS: i64 = 1500;

fn config(engine: KvEngine) -> Config {
    Config::default()
        .with_backing(Backing::Kv)
        .with_kv_engine(engine)
        .with_memory_budget(64 << 20)
}

/// What the actor holds: row count, sum of ids, sum of blob lengths.
type Contents = (i64, i64, i64);

const READ: &str = "SELECT count(*), sum(n), sum(length(b)) FROM t";

fn read(store: &Store) -> Result<Contents, shoal::Error> {
    store.with_actor("a", |c| -> shoal::Result<_> {
        Ok(c.query_row(READ, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?)
    })
}

/// A closed store holding one actor written in one transaction, so the only states it
/// ever was in are "no table" and `Contents`.
fn pristine(engine: KvEngine, dir: &Path) -> Contents {
    let store = Store::open(dir, config(engine)).unwrap();
    store
        .with_actor("a", |c| -> shoal::Result<_> {
            c.execute_batch("BEGIN; CREATE TABLE t(n INTEGER PRIMARY KEY, b BLOB)")?;
            for n in 1..=ROWS {
                c.execute("INSERT INTO t VALUES (?1, randomblob(4000))", [n])?;
            }
            Ok(c.execute_batch("COMMIT")?)
        })
        .unwrap();
    let contents = read(&store).unwrap();
    assert_eq!(contents.0, ROWS);
    contents
}

/// Every file under `dir`, with the length up to its last non-zero byte (fjall
/// preallocates its journals with zeros; damage is aimed at what was written).
fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                if used > 0 {
                    out.push((path, used as u64));
                }
            }
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A seeded generator.
struct Rng(fastrand::Rng);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0.u64(..n.max(1))
    }
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    FlipBit { at: u64, bit: u8 },
    ZeroBlock { at: u64 },
    Truncate { at: u64 },
}

fn damage(path: &Path, how: Damage) {
    let mut bytes = std::fs::read(path).unwrap();
    match how {
        Damage::FlipBit { at, bit } => bytes[at as usize] ^= 1 << bit,
        Damage::ZeroBlock { at } => {
            let at = at as usize;
            let end = (at + 4096).min(bytes.len());
            bytes[at..end].fill(0);
        }
        Damage::Truncate { at } => bytes.truncate(at as usize),
    }
    std::fs::write(path, bytes).unwrap();
}

/// Opens the damaged copy and reads, in a thread so a hang fails the trial.
fn outcome(dir: PathBuf, engine: KvEngine) -> Result<Result<Contents, String>, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = std::panic::catch_unwind(|| {
            let store = Store::open(&dir, config(engine)).map_err(|e| e.to_string())?;
            read(&store).map_err(|e| e.to_string())
        });
        let _ = tx.send(result.map_err(|_| "a panic".to_owned()));
    });
    rx.recv_timeout(TRIAL_LIMIT)
        .unwrap_or_else(|_| Err("no answer: a hang".to_owned()))
}

fn damaged_files_are_errors_never_panics_or_other_data(engine: KvEngine, seed: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    let expected = pristine(engine, &clean);
    let engine_dir = format!("kv-{}", engine.as_str());
    let targets = files(&clean.join(&engine_dir));
    assert!(!targets.is_empty());
    let mut rng = Rng(fastrand::Rng::with_seed(seed));
    let mut failures = Vec::new();
    let mut refused = 0;
    for trial in 0..TRIALS {
        let (file, used) = &targets[rng.below(targets.len() as u64) as usize];
        let at = rng.below(*used);
        let how = match trial % 3 {
            0 => Damage::FlipBit {
                at,
                bit: rng.below(8) as u8,
            },
            1 => Damage::ZeroBlock { at },
            _ => Damage::Truncate { at },
        };
        let copy = tmp.path().join(format!("trial-{trial}"));
        copy_dir(&clean, &copy);
        let relative = file.strip_prefix(&clean).unwrap();
        damage(&copy.join(relative), how);
        let what = format!("{how:?} in {}", relative.display());
        match outcome(copy.clone(), engine) {
            Ok(Ok(got)) if got == expected => {}
            Ok(Ok(got)) => failures.push(format!("{what}: read {got:?}, wrote {expected:?}")),
            Ok(Err(_)) => refused += 1,
            Err(bad) => failures.push(format!("{what}: {bad}")),
        }
        let _ = std::fs::remove_dir_all(&copy);
    }
    eprintln!(
        "{}: {refused} of {TRIALS} damaged stores refused, the rest read intact",
        engine.as_str()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn damaged_fjall_files_are_errors() {
    damaged_files_are_errors_never_panics_or_other_data(KvEngine::Fjall, 0x5eed_f1a1);
}

#[cfg(feature = "sled")]
#[test]
fn damaged_sled_files_are_errors() {
    damaged_files_are_errors_never_panics_or_other_data(KvEngine::Sled, 0x5eed_51ed);
}
