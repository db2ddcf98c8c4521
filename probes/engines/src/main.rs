//! The write pattern of `shoal bench commits` (one small insert per commit) run straight on
//! candidate engines, without SQLite or the VFS, to see what each engine costs per commit.
//!
//! Each commit is one atomic batch of two 4 KiB pages of one actor, as SQLite writes them for
//! an insert of a 100-byte row: page 1 (its header changes on every commit) and the leaf the
//! row lands on (a new leaf every 35 rows; the old ones stay). A page holds random bytes up to
//! its rows and zeros after, as a table of `zeroblob(100)` rows does not: the random part
//! keeps compression honest. Keys are shoal's shape: an 8-byte actor id and a 4-byte page
//! number, big-endian.
//!
//! `cargo run --release -- [SECONDS] [ACTORS,...] [ENGINE[@GROUP],...]` prints, per engine and actor count,
//! commits per second with the batches only written to the OS (relaxed: no fsync), and the
//! bytes written to disk per commit (`write_bytes` of /proc/self/io, the close included).
//! `ENGINE@GROUP` applies the commits of GROUP actors in one batch, as a group committer
//! that coalesced applies would.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

trait Engine: Sync {
    fn commit(&self, pages: &[(Vec<u8>, Vec<u8>)]) -> anyhow::Result<()>;
}

struct Fjall2 {
    partition: fjall2::PartitionHandle,
    keyspace: fjall2::Keyspace,
    /// Compress each page before the engine sees it (the "smaller values" lever).
    page_lz4: bool,
}

impl Engine for Fjall2 {
    fn commit(&self, pages: &[(Vec<u8>, Vec<u8>)]) -> anyhow::Result<()> {
        let mut batch = self.keyspace.batch();
        for (k, v) in pages {
            if self.page_lz4 {
                batch.insert(
                    &self.partition,
                    k.as_slice(),
                    lz4_flex::compress_prepend_size(v),
                );
            } else {
                batch.insert(&self.partition, k.as_slice(), v.as_slice());
            }
        }
        batch.commit()?;
        Ok(())
    }
}

struct Fjall3 {
    db: fjall3::Database,
    keyspace: fjall3::Keyspace,
}

impl Engine for Fjall3 {
    fn commit(&self, pages: &[(Vec<u8>, Vec<u8>)]) -> anyhow::Result<()> {
        let mut batch = self.db.batch();
        for (k, v) in pages {
            batch.insert(&self.keyspace, k.as_slice(), v.as_slice());
        }
        batch.commit()?;
        Ok(())
    }
}

const CACHE: u64 = 64 << 20;
const MEMTABLE: u64 = 4 << 20;

fn open(name: &str, dir: &Path) -> anyhow::Result<Box<dyn Engine>> {
    Ok(match name {
        "fjall2" | "fjall2-kvsep" | "fjall2-nolz4" | "fjall2-pagelz4" => {
            let keyspace = fjall2::Config::new(dir).cache_size(CACHE).open()?;
            let mut options =
                fjall2::PartitionCreateOptions::default().max_memtable_size(MEMTABLE as u32);
            if name == "fjall2-kvsep" {
                options = options.with_kv_separation(fjall2::KvSeparationOptions::default());
            }
            if name == "fjall2-nolz4" {
                options = options.compression(fjall2::CompressionType::None);
            }
            let partition = keyspace.open_partition("pages", options)?;
            Box::new(Fjall2 {
                partition,
                keyspace,
                page_lz4: name == "fjall2-pagelz4",
            })
        }
        "fjall3" | "fjall3-kvsep" | "fjall3-nolz4" => {
            let db = fjall3::Database::builder(dir).cache_size(CACHE).open()?;
            let kvsep = name == "fjall3-kvsep";
            let nolz4 = name == "fjall3-nolz4";
            let keyspace = db.keyspace("pages", || {
                let mut o = fjall3::KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE);
                if kvsep {
                    o = o.with_kv_separation(Some(fjall3::KvSeparationOptions::default()));
                }
                if nolz4 {
                    o = o.data_block_compression_policy(fjall3::config::CompressionPolicy::all(
                        fjall3::CompressionType::None,
                    ));
                }
                o
            })?;
            Box::new(Fjall3 { db, keyspace })
        }
        other => anyhow::bail!("unknown engine {other}"),
    })
}

fn write_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

const THREADS: usize = 2;
const ROWS_PER_PAGE: u64 = 35;

fn page(rows: u64, rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut page = vec![0u8; 4096];
    let used = (rows.min(ROWS_PER_PAGE) * 110) as usize;
    rng.fill(&mut page[..used.min(4096)]);
    page
}

fn key(actor: u64, pgno: u32) -> Vec<u8> {
    let mut k = actor.to_be_bytes().to_vec();
    k.extend_from_slice(&pgno.to_be_bytes());
    k
}

/// Runs the workload for `seconds`; each call of `commit` carries the commits of `group`
/// actors (1: one commit per batch, as shoal applies them today).
fn run(engine: &dyn Engine, actors: usize, group: usize, seconds: f64) -> anyhow::Result<f64> {
    let stop = AtomicBool::new(false);
    let commits = AtomicU64::new(0);
    let t0 = Instant::now();
    let result: anyhow::Result<()> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (stop, commits) = (&stop, &commits);
                s.spawn(move || -> anyhow::Result<()> {
                    let mut rng = fastrand::Rng::with_seed(t as u64);
                    let mine: Vec<u64> = (t..actors).step_by(THREADS).map(|a| a as u64).collect();
                    let mut rows = vec![0u64; mine.len()];
                    let mut batch = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        for (i, &actor) in mine.iter().enumerate() {
                            rows[i] += 1;
                            let leaf = 2 + (rows[i] / ROWS_PER_PAGE) as u32;
                            batch.push((key(actor, 1), page(1, &mut rng)));
                            batch.push((
                                key(actor, leaf),
                                page(rows[i] % ROWS_PER_PAGE + 1, &mut rng),
                            ));
                            if batch.len() >= 2 * group {
                                engine.commit(&batch)?;
                                commits.fetch_add((batch.len() / 2) as u64, Ordering::Relaxed);
                                batch.clear();
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("worker panicked"))
    });
    result?;
    Ok(commits.into_inner() as f64 / t0.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().map_or(Ok(4.0), |s| s.parse())?;
    let actors: Vec<usize> = args
        .next()
        .unwrap_or_else(|| "16,256,1000".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let engines: Vec<String> = args.next().map_or_else(
        || {
            [
                "fjall2",
                "fjall2-nolz4",
                "fjall2-kvsep",
                "fjall3",
                "fjall3-nolz4",
                "fjall3-kvsep",
            ]
            .map(String::from)
            .to_vec()
        },
        |e| e.split(',').map(String::from).collect(),
    );
    println!(
        "{:>16} {:>7} {:>12} {:>14}",
        "engine", "actors", "commits/s", "bytes/commit"
    );
    for &n in &actors {
        for name in &engines {
            let dir = tempfile_dir(name, n)?;
            let before = write_bytes();
            let (base, group) = match name.split_once('@') {
                Some((base, group)) => (base, group.parse()?),
                None => (name.as_str(), 1),
            };
            let engine = open(base, &dir)?;
            let rate = run(engine.as_ref(), n, group, seconds)?;
            let commits = rate * seconds;
            drop(engine);
            let bytes = write_bytes() - before;
            println!(
                "{name:>16} {n:>7} {rate:>12.0} {:>14.0}",
                bytes as f64 / commits
            );
            std::fs::remove_dir_all(&dir)?;
        }
    }
    Ok(())
}

fn tempfile_dir(name: &str, n: usize) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::current_dir()?
        .join("target")
        .join(format!("probe-{name}-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
