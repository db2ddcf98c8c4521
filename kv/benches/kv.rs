//! Benchmarks of the kv layer on `SledKv` and `FjallKv` (in temporary directories), with
//! `MemKv` as the in-run baseline: point gets of 4 KiB chunks, atomic batches of chunk
//! puts, flush latency, the group-commit effect (durable commits per second and commits
//! per flush as committing threads grow), and the memory each persistent backend really
//! uses (RSS) while reading a store much larger than its configured cache.
//!
//! Run: `cargo bench -p shoal-kv --bench kv` (about 2 minutes). Without `--bench` (as
//! `cargo test --all-targets` runs it) it does a smoke pass of a few seconds instead.
//! Timing is `std::time::Instant`; each figure is a count over a fixed time budget.
//! The stores' directory is `$SHOAL_BENCH_DIR` if set, else the system temp directory:
//! flush figures are only as real as that file system's fsync.
//!
//! RSS never shrinks much once grown, so one process cannot measure two backends, nor a
//! write phase and the read phase after it. The benchmark therefore runs each phase of each
//! backend in a child process: it starts its own executable with `--rss-child write|read
//! sled|fjall DIR MIB` and reads the figures the child prints. `$SHOAL_BENCH_RSS_MIB` sets
//! the amount written (default 300 MiB; 8 MiB in the smoke pass).

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use shoal_kv::raw::keys::chunk_key;
use shoal_kv::{
    ChunkNo, DbId, FileKind, FileWrite, FjallConfig, FjallKv, KeyRange, Kv, KvStore, MemKv,
    SledConfig, SledKv,
};

const CHUNK: usize = 4096;
/// Chunks preloaded for the read benchmarks: 16 MiB, well inside the 64 MiB cache.
const CHUNKS: u32 = 4096;
/// The cache both backends get in the timing benchmarks (sled's default).
const TIMING_CACHE: u64 = 64 << 20;
/// The cache both backends get in the RSS measurement.
const RSS_CACHE: u64 = 16 << 20;
const READS: DbId = DbId(1);
const WRITES: DbId = DbId(2);
const COMMITS: DbId = DbId(3);

/// Time budgets: the real run, or a smoke pass that only proves the code runs.
#[derive(Clone, Copy)]
struct Budget {
    read: Duration,
    write: Duration,
    flush: Duration,
    group: Duration,
    chunks: u32,
    /// Chunks written between flushes by the batch benchmark.
    round: u32,
}

const FULL: Budget = Budget {
    read: Duration::from_millis(1500),
    write: Duration::from_millis(2000),
    flush: Duration::from_millis(3000),
    group: Duration::from_millis(3000),
    chunks: CHUNKS,
    round: 16 * 1024,
};

const SMOKE: Budget = Budget {
    read: Duration::from_millis(20),
    write: Duration::from_millis(20),
    flush: Duration::from_millis(20),
    group: Duration::from_millis(50),
    chunks: 64,
    round: 64,
};

/// A seeded sequence of chunk numbers, so reads are not sequential and every run reads
/// the same ones.
struct Chunks(fastrand::Rng, u32);

impl Chunks {
    fn new(seed: u64, count: u32) -> Chunks {
        Chunks(fastrand::Rng::with_seed(seed), count)
    }

    fn next(&mut self) -> ChunkNo {
        ChunkNo(self.0.u32(..self.1))
    }
}

fn page(no: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(CHUNK + FileWrite::SPARE_CAPACITY);
    v.extend((0..CHUNK).map(|i| (i as u32 ^ no) as u8));
    v
}

/// Calls `op` until `budget` has passed; returns the number of calls and the time taken.
fn run_for(budget: Duration, mut op: impl FnMut()) -> (u64, Duration) {
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..16 {
            op();
        }
        n += 16;
        let elapsed = start.elapsed();
        if elapsed >= budget {
            return (n, elapsed);
        }
    }
}

fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// `1234567.8` -> `"1,234,568"`.
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One row of the results table.
fn row(name: &str, figure: &str, note: &str) {
    println!("| {name} | {figure} | {note} |");
}

fn load(kv: &Kv, chunks: u32) {
    for first in (0..chunks).step_by(256) {
        let mut write = kv.file_write(READS, FileKind::Main);
        for no in first..(first + 256).min(chunks) {
            write.put_chunk(ChunkNo(no), page(no));
        }
        write.commit().unwrap();
    }
    shoal_kv::raw::of(kv).backend().flush().unwrap();
}

/// Raw point gets (no checksum), warm; returns gets per second.
fn bench_gets(backend: &dyn KvStore, b: Budget) -> f64 {
    let mut order = Chunks::new(42, b.chunks);
    // Warm: touch every chunk once.
    for no in 0..b.chunks {
        backend
            .get(&chunk_key(READS, FileKind::Main, ChunkNo(no)))
            .unwrap()
            .unwrap();
    }
    let (n, d) = run_for(b.read, || {
        let key = chunk_key(READS, FileKind::Main, order.next());
        let v = backend.get(&key).unwrap().unwrap();
        std::hint::black_box(v);
    });
    per_sec(n, d)
}

/// Verified chunk reads through `Kv` (get + checksum), warm; returns reads per second.
fn bench_read_chunk(kv: &Kv, b: Budget) -> f64 {
    let mut order = Chunks::new(7, b.chunks);
    let (n, d) = run_for(b.read, || {
        let v = kv.read_chunk(READS, FileKind::Main, order.next()).unwrap();
        std::hint::black_box(v.unwrap());
    });
    per_sec(n, d)
}

struct BatchResult {
    batches: u64,
    applying: Duration,
    flushing: Duration,
}

/// Atomic batches of `per_batch` sealed 4 KiB chunk puts (sealing included), in rounds
/// of `b.round` chunks each ended by a flush, so the figure is a rate the disk sustains
/// rather than how fast sled buffers writes in memory.
fn bench_batches(kv: &Kv, per_batch: u32, b: Budget) -> BatchResult {
    let mut order = Chunks::new(99, b.chunks);
    let mut r = BatchResult {
        batches: 0,
        applying: Duration::ZERO,
        flushing: Duration::ZERO,
    };
    while r.applying + r.flushing < b.write {
        let start = Instant::now();
        for _ in 0..b.round / per_batch {
            let mut write = kv.file_write(WRITES, FileKind::Main);
            for _ in 0..per_batch {
                let no = order.next();
                write.put_chunk(no, page(no.0));
            }
            write.commit().unwrap();
            r.batches += 1;
        }
        let applied = Instant::now();
        shoal_kv::raw::of(kv).backend().flush().unwrap();
        r.applying += applied - start;
        r.flushing += applied.elapsed();
    }
    r
}

/// Flush latencies, each right after a one-chunk batch (or with nothing applied).
fn bench_flush(kv: &Kv, after_batch: bool, b: Budget) -> Vec<Duration> {
    let mut order = Chunks::new(5, b.chunks);
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < b.flush && lat.len() < 5000 {
        if after_batch {
            let no = order.next();
            let mut write = kv.file_write(WRITES, FileKind::Main);
            write.put_chunk(no, page(no.0));
            write.commit().unwrap();
        }
        let t = Instant::now();
        shoal_kv::raw::of(kv).backend().flush().unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    lat
}

struct GroupResult {
    commits: u64,
    flushes: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// `threads` threads each applying a one-chunk batch and committing it durably, in a loop.
fn bench_group(kv: &Arc<Kv>, threads: u32, b: Budget) -> GroupResult {
    let before = kv.commit_stats();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (kv, stop) = (Arc::clone(kv), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let no = ChunkNo(t * 64 + i % 64);
                    let mut write = kv.file_write(COMMITS, FileKind::Main);
                    write.put_chunk(no, page(no.0));
                    write.commit().unwrap();
                    kv.commit_durable().unwrap();
                    lat.push(t0.elapsed());
                    i += 1;
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(b.group);
    stop.store(true, Ordering::Relaxed);
    let mut latencies: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let elapsed = start.elapsed();
    latencies.sort();
    let after = kv.commit_stats();
    GroupResult {
        commits: after.completed - before.completed,
        flushes: after.flushes - before.flushes,
        elapsed,
        latencies,
    }
}

/// Today's date and time to the minute (UTC) from the system clock.
fn today() -> String {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    format!("{} UTC", now.get(..16).unwrap_or(&now).replace('T', " "))
}

fn proc_field(file: &str, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

fn memory() -> String {
    proc_field("/proc/meminfo", "MemTotal")
        .and_then(|v| v.trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map(|kb| format!("{:.1} GiB", kb / (1024.0 * 1024.0)))
        .unwrap_or_else(|| "unknown".into())
}

/// Where RSS (`VmRSS`) and peak RSS (`VmHWM`) stand now, in KiB.
fn rss_kib() -> (u64, u64) {
    let kib = |field| {
        proc_field("/proc/self/status", field)
            .and_then(|v| v.trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (kib("VmRSS"), kib("VmHWM"))
}

fn open_backend(backend: &str, dir: &Path) -> Box<dyn KvStore> {
    match backend {
        "sled" => Box::new(
            SledKv::open(&SledConfig {
                cache_capacity: RSS_CACHE,
                ..SledConfig::new(dir)
            })
            .unwrap(),
        ),
        "fjall" => Box::new(
            FjallKv::open(&FjallConfig {
                cache_capacity: RSS_CACHE,
                ..FjallConfig::new(dir)
            })
            .unwrap(),
        ),
        other => panic!("unknown backend {other}"),
    }
}

/// A 4 KiB value of random bytes, with its chunk number in front so a read can tell it
/// got the right one.
fn random_value(no: u32, rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut v = vec![0u8; CHUNK];
    v[..4].copy_from_slice(&no.to_be_bytes());
    rng.fill(&mut v[4..]);
    v
}

/// One phase of the RSS measurement, in this (child) process; prints `name value` lines.
fn rss_child(phase: &str, backend: &str, dir: &Path, mib: u32) {
    let chunks = mib * 256;
    let report = |name: &str, value: f64| println!("{name} {value}");
    let (start, _) = rss_kib();
    report("rss_start_kib", start as f64);
    let kv = open_backend(backend, dir);
    let (opened, _) = rss_kib();
    report("rss_open_kib", opened as f64);
    let t = Instant::now();
    match phase {
        "write" => {
            let mut rng = fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15);
            for first in (0..chunks).step_by(16) {
                let mut batch = shoal_kv::raw::Batch::new();
                for no in first..(first + 16).min(chunks) {
                    batch.put(
                        chunk_key(DbId(1), FileKind::Main, ChunkNo(no)).to_vec(),
                        random_value(no, &mut rng),
                    );
                }
                kv.apply(batch).unwrap();
            }
            kv.flush().unwrap();
            report("write_s", t.elapsed().as_secs_f64());
        }
        "read" => {
            // Every chunk once, in a random order (a full-period LCG over a power of two
            // past `chunks`), then one full scan.
            let span = u64::from(chunks).next_power_of_two();
            let mut x = 0u64;
            let mut read = 0u32;
            for _ in 0..span {
                x = (x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407))
                    % span;
                let Ok(no) = u32::try_from(x) else { continue };
                if no >= chunks {
                    continue;
                }
                let v = kv
                    .get(&chunk_key(DbId(1), FileKind::Main, ChunkNo(no)))
                    .unwrap()
                    .unwrap();
                assert_eq!(v[..4], no.to_be_bytes(), "chunk {no} read back wrong");
                read += 1;
            }
            assert_eq!(read, chunks, "the LCG missed chunks");
            report("get_s", t.elapsed().as_secs_f64());
            let (after_gets, _) = rss_kib();
            report("rss_gets_kib", after_gets as f64);
            let t = Instant::now();
            let mut scanned = 0u32;
            for entry in kv.scan(KeyRange::prefix(&[])).unwrap() {
                let (_, v) = entry.unwrap();
                std::hint::black_box(v);
                scanned += 1;
            }
            assert_eq!(scanned, chunks);
            report("scan_s", t.elapsed().as_secs_f64());
            let (after_scan, _) = rss_kib();
            report("rss_scan_kib", after_scan as f64);
        }
        other => panic!("unknown phase {other}"),
    }
    let (_, peak) = rss_kib();
    report("rss_peak_kib", peak as f64);
    drop(kv);
}

/// Runs one phase in a child process and returns what it printed.
fn run_child(phase: &str, backend: &str, dir: &Path, mib: u32) -> BTreeMap<String, f64> {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["--rss-child", phase, backend])
        .arg(dir)
        .arg(mib.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{phase} {backend} child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// Bytes the files under `dir` occupy on disk (allocated blocks) and their apparent size.
fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut allocated = 0;
    let mut apparent = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                allocated += meta.blocks() * 512;
                apparent += meta.len();
            }
        }
    }
    (allocated, apparent)
}

fn mib(bytes: f64) -> String {
    format!("{:.0} MiB", bytes / f64::from(1 << 20))
}

/// The RSS measurement: for each backend, a write child then a read child.
fn bench_rss(base: &Path, mib_total: u32) {
    println!();
    println!(
        "RSS: {mib_total} MiB of random 4 KiB values ({} chunks, incompressible) written in \
         batches of 16 by one child process, then read back by a fresh one: every chunk \
         once in random order (`get`), then one full `scan`. Both backends get a {} MiB \
         cache; fjall's write buffer is {} MiB.",
        mib_total * 256,
        RSS_CACHE >> 20,
        FjallConfig::new("").write_buffer >> 20,
    );
    println!();
    println!(
        "| backend | RSS after open | growth after all gets | growth after the scan | peak RSS (read) | peak RSS (write) | disk used | write | gets | scan |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for backend in ["sled", "fjall"] {
        let dir = tempfile::tempdir_in(base).unwrap();
        let w = run_child("write", backend, dir.path(), mib_total);
        let (allocated, apparent) = disk_usage(dir.path());
        let r = run_child("read", backend, dir.path(), mib_total);
        let kib =
            |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(f64::NAN) * 1024.0;
        let secs = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(f64::NAN);
        let open = kib(&r, "rss_open_kib");
        let data = f64::from(mib_total) * f64::from(1 << 20);
        println!(
            "| {backend} | {} | +{} | +{} | {} | {} | {} ({:.2}x data; apparent {}) | {:.1} s | {} gets/s | {:.0} MiB/s |",
            mib(open),
            mib(kib(&r, "rss_gets_kib") - open),
            mib(kib(&r, "rss_scan_kib") - open),
            mib(kib(&r, "rss_peak_kib")),
            mib(kib(&w, "rss_peak_kib")),
            mib(allocated as f64),
            allocated as f64 / data,
            mib(apparent as f64),
            secs(&w, "write_s"),
            thousands(f64::from(mib_total * 256) / secs(&r, "get_s")),
            f64::from(mib_total) / secs(&r, "scan_s"),
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--rss-child") {
        let arg = |n: usize| args.get(i + n).map(String::as_str).unwrap_or_default();
        rss_child(arg(1), arg(2), Path::new(arg(3)), arg(4).parse().unwrap());
        return;
    }
    let full = args.iter().any(|a| a == "--bench");
    let b = if full { FULL } else { SMOKE };
    let base = std::env::var_os("SHOAL_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let sled_dir = tempfile::tempdir_in(&base).unwrap();
    let fjall_dir = tempfile::tempdir_in(&base).unwrap();
    let sled_config = SledConfig {
        cache_capacity: TIMING_CACHE,
        ..SledConfig::new(sled_dir.path())
    };
    let fjall_config = FjallConfig {
        cache_capacity: TIMING_CACHE,
        ..FjallConfig::new(fjall_dir.path())
    };
    let rss_mib: u32 = std::env::var("SHOAL_BENCH_RSS_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 300 } else { 8 });

    println!(
        "# shoal-kv benchmark{}",
        if full {
            ""
        } else {
            " (smoke pass: figures meaningless)"
        }
    );
    println!("command: cargo bench -p shoal-kv --bench kv");
    println!("date: {}", today());
    println!(
        "machine: nproc {}, memory {}, cpu {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory(),
        proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into())
    );
    println!(
        "stores: sled 0.34.7 (cache {} MiB, flush_every_ms {:?}) and fjall 2.11 (cache {} MiB, \
         write buffer {} MiB, fsync every {:?} ms), in $SHOAL_BENCH_DIR or the temp directory; \
         {} chunks of {} B preloaded",
        sled_config.cache_capacity >> 20,
        sled_config.flush_every_ms,
        fjall_config.cache_capacity >> 20,
        fjall_config.write_buffer >> 20,
        fjall_config.flush_every_ms,
        b.chunks,
        CHUNK
    );
    println!();

    let mem = Kv::open(Arc::new(MemKv::new())).unwrap();
    load(&mem, b.chunks);
    let backends: [(&str, Arc<Kv>); 2] = [
        (
            "SledKv",
            Arc::new(Kv::open(Arc::new(SledKv::open(&sled_config).unwrap())).unwrap()),
        ),
        (
            "FjallKv",
            Arc::new(Kv::open(Arc::new(FjallKv::open(&fjall_config).unwrap())).unwrap()),
        ),
    ];
    for (_, kv) in &backends {
        load(kv, b.chunks);
    }

    println!("| benchmark | figure | notes |");
    println!("| --- | --- | --- |");

    let mem_gets = bench_gets(shoal_kv::raw::of(&mem).backend().as_ref(), b);
    row(
        "MemKv get, 4 KiB chunk (baseline)",
        &format!("{} gets/s", thousands(mem_gets)),
        "raw `KvStore::get`, random chunk of 16 MiB",
    );
    for (name, kv) in &backends {
        let gets = bench_gets(shoal_kv::raw::of(kv).backend().as_ref(), b);
        row(
            &format!("{name} get, 4 KiB chunk, warm"),
            &format!("{} gets/s", thousands(gets)),
            &format!("{:.2}x MemKv", gets / mem_gets),
        );
        let reads = bench_read_chunk(kv, b);
        row(
            &format!("{name} `Kv::read_chunk` (get + checksum), warm"),
            &format!("{} reads/s", thousands(reads)),
            &format!("{:.2}x MemKv get", reads / mem_gets),
        );
    }

    for (name, kv) in &backends {
        for per_batch in [1u32, 16] {
            let r = bench_batches(kv, per_batch, b);
            let total = r.applying + r.flushing;
            let chunks = r.batches * u64::from(per_batch);
            row(
                &format!("{name} atomic batch of {per_batch} chunk put(s), flushed every 64 MiB"),
                &format!("{} batches/s", thousands(per_sec(r.batches, total))),
                &format!(
                    "{} chunks/s, {:.0} MiB/s sustained; applying alone {} batches/s; flushing {:.0}% of the time",
                    thousands(per_sec(chunks, total)),
                    per_sec(chunks, total) * CHUNK as f64 / f64::from(1 << 20),
                    thousands(per_sec(r.batches, r.applying)),
                    100.0 * r.flushing.as_secs_f64() / total.as_secs_f64(),
                ),
            );
        }
    }

    for (name, kv) in &backends {
        for (after_batch, what) in [(true, "after a 1-chunk batch"), (false, "nothing to flush")] {
            let lat = bench_flush(kv, after_batch, b);
            let mean = lat.iter().sum::<Duration>() / u32::try_from(lat.len().max(1)).unwrap();
            row(
                &format!("{name} flush, {what}"),
                &format!("p50 {}", micros(percentile(&lat, 0.5))),
                &format!(
                    "p99 {}, mean {}, n={}",
                    micros(percentile(&lat, 0.99)),
                    micros(mean),
                    lat.len()
                ),
            );
        }
    }

    for (name, kv) in &backends {
        let mut single = 0.0;
        for threads in [1u32, 16, 64] {
            let r = bench_group(kv, threads, b);
            let rate = per_sec(r.commits, r.elapsed);
            if threads == 1 {
                single = rate;
            }
            row(
                &format!("{name} group commit, {threads} thread(s): apply + commit_durable"),
                &format!("{} durable commits/s", thousands(rate)),
                &format!(
                    "{:.2}x 1 thread; {:.1} commits/flush ({} commits, {} flushes); latency p50 {}, p99 {}",
                    rate / single,
                    r.commits as f64 / r.flushes.max(1) as f64,
                    r.commits,
                    r.flushes,
                    micros(percentile(&r.latencies, 0.5)),
                    micros(percentile(&r.latencies, 0.99)),
                ),
            );
        }
    }
    println!();
    println!(
        "peak RSS of the benchmark process (VmHWM, both stores open): {}",
        proc_field("/proc/self/status", "VmHWM").unwrap_or_else(|| "unknown".into())
    );
    drop(backends);
    drop(mem);

    bench_rss(&base, rss_mib);
}
