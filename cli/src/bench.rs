//! `shoal bench NAME`: every speed and memory claim, measured as a ratio against a
//! baseline run in the same process and the same run (the machines are shared and noisy).
//!
//! - `wake`: the mass wake (`shoal wake`) for kv, files and files-tuned, in child processes;
//! - `commits`: durable commits per second with N concurrent actors: shoal (group commit)
//!   against one SQLite file per actor (synchronous=FULL, DELETE and WAL journals), and
//!   shoal relaxed against files with WAL and synchronous=NORMAL;
//! - `mixed`: a workload modelled on SQLite's speedtest1 on one database: shoal against the
//!   unix VFS of the same SQLite build, plus an in-memory floor;
//! - `reads`: point reads per second and full-scan MB/s, warm and after reopening;
//! - `coldwake`: latency of waking a cold actor of about 300 KB (open plus first query);
//! - `soak`: `commits` with 1,000 actors for 60 s (`--actors`, `--seconds`), RSS sampled
//!   throughout against the memory budget plus 32 KB per actor;
//! - `takeover` (on PostgreSQL, `--kv postgresql://...`): a host SIGKILLed mid-commit, and
//!   the time until another host's first commit of its actor, against the lease length.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use shoal::rusqlite::{Connection, OpenFlags};
use shoal::{Backing, Config, Durability, KvEngine, Store};

use crate::workload;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchName {
    Wake,
    Commits,
    Mixed,
    Reads,
    Coldwake,
    Soak,
    Takeover,
    History,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The benchmark to run.
    #[arg(value_enum)]
    name: BenchName,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Seconds each measured configuration of `commits` runs [default: 2; for `soak` 60].
    #[arg(long)]
    seconds: Option<f64>,
    /// Concurrent actors for `commits` [default: 1,16,256,1000; for `soak` one count, 1000].
    #[arg(long, value_delimiter = ',')]
    actors: Vec<usize>,
    /// Run only these `commits` variants (for profiling): shoal_full,
    /// shoal_full_own_flushes (group commit off: on PostgreSQL it runs by default),
    /// files_delete_full,
    /// files_wal_full, shoal_relaxed, files_wal_normal.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Worker threads for `commits` (the bounded pool the actors share).
    #[arg(long, default_value_t = 64)]
    threads: usize,
    /// Size of `mixed`, as speedtest1's --size (100 inserts 50,000 rows in its first test).
    #[arg(long, default_value_t = 25)]
    size: u32,
    /// Actors woken by `coldwake`.
    #[arg(long, default_value_t = 200)]
    cold_actors: usize,
    /// Mass-wake sizes for `wake`.
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 10000])]
    wake_actors: Vec<usize>,
    /// Lease lengths for `takeover`, in milliseconds.
    #[arg(long, value_delimiter = ',', default_values_t = [1000u64, 5000])]
    lease_ms: Vec<u64>,
    /// Kills per lease length for `takeover`.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Actor sizes for `history`, in MiB.
    #[arg(long, value_delimiter = ',', default_values_t = [1u64, 8, 64])]
    history_mb: Vec<u64>,
}

#[derive(Debug, Args)]
pub struct HoldArgs {
    /// The actor to commit to.
    #[arg(long, default_value = "held")]
    actor: String,
    /// The lease length, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    lease_ms: u64,
}

/// The host `takeover` kills: commits to one actor until killed, `ok N` after each.
pub fn hold(dir: &Path, config: Config, args: &HoldArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let store = Store::open(
        dir,
        config.with_lease_duration(Duration::from_millis(args.lease_ms)),
    )?;
    let mut out = std::io::stdout().lock();
    for n in 1u64.. {
        store.with_actor(&args.actor, |c| -> shoal::Result<()> {
            c.execute_batch("CREATE TABLE IF NOT EXISTS t(n INTEGER)")?;
            c.execute("INSERT INTO t VALUES (?1)", [n.cast_signed()])?;
            Ok(())
        })?;
        writeln!(out, "ok {n}")?;
        out.flush()?;
    }
    Ok(())
}

// ---------------------------------------------------------------- takeover

/// Takeover after a host dies: a child host commits to an actor; it is SIGKILLed, and the
/// time from the kill to the first commit of the same actor on this process (a second
/// host) is measured, per lease length, against the lease.
fn takeover(scratch: &Path, args: &BenchArgs) -> anyhow::Result<Value> {
    use std::io::BufRead;
    let Some(url) = POSTGRES.get() else {
        bail!("takeover needs a store hosts share: run it with --kv postgresql://...");
    };
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    for &lease_ms in &args.lease_ms {
        let mut hist = Histogram::<u64>::new(3)?;
        let actor = format!("takeover-{lease_ms}");
        for kill in 0..args.kills.max(1) {
            let dir = scratch.join(format!("takeover-{lease_ms}-{kill}"));
            let mut child = std::process::Command::new(&exe)
                .arg("--store")
                .arg(dir.join("a"))
                .args(["--kv", url, "hold", "--actor", &actor])
                .args(["--lease-ms", &lease_ms.to_string()])
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            let mut lines = std::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
            // Let it commit for a while, then kill it.
            for _ in 0..20 {
                match lines.next() {
                    Some(Ok(line)) if line.starts_with("ok ") => {}
                    other => bail!("the holding host stopped: {other:?}"),
                }
            }
            child.kill()?;
            let killed = Instant::now();
            child.wait()?;
            let config = Config::default()
                .with_postgres(url.clone())
                .with_lease_duration(Duration::from_millis(lease_ms));
            let store = Store::open(dir.join("b"), config)?;
            store.with_actor(&actor, |c| -> shoal::Result<()> {
                c.execute("INSERT INTO t VALUES (0)", [])?;
                Ok(())
            })?;
            let took = killed.elapsed();
            hist.record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX))?;
            drop(store);
            let _ = std::fs::remove_dir_all(&dir);
        }
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        if !args.json {
            println!(
                "lease {lease_ms:>6} ms: takeover after a kill p50 {:>7.1} ms  p99 {:>7.1} ms  ({:.2}x and {:.2}x the lease, {} kills)",
                ms(0.5),
                ms(0.99),
                ms(0.5) / lease_ms as f64,
                ms(0.99) / lease_ms as f64,
                hist.len()
            );
        }
        rows.push(json!({
            "lease_ms": lease_ms, "kills": hist.len(),
            "p50_ms": ms(0.5), "p99_ms": ms(0.99), "max_ms": hist.max() as f64 / 1000.0,
        }));
    }
    Ok(json!({ "bench": "takeover", "results": rows }))
}

/// What the run was measured on.
fn machine() -> Value {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    args.insert(0, "shoal".to_owned());
    let mem_kb = shoal::memory::total_memory_kb();
    json!({
        "command": args.join(" "),
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gib": mem_kb.map(|kb| (kb as f64 / (1 << 20) as f64 * 10.0).round() / 10.0),
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "sqlite": shoal::rusqlite::version(),
    })
}

pub fn bench(store_dir: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    let _ = rlimit::increase_nofile_limit(65536);
    let machine = machine();
    if !args.json {
        println!(
            "{}\nnproc {}, memory {} GiB, {}, SQLite {}\n",
            machine["command"].as_str().unwrap_or_default(),
            machine["nproc"],
            machine["memory_gib"],
            machine["date"].as_str().unwrap_or_default(),
            machine["sqlite"].as_str().unwrap_or_default()
        );
    }
    let scratch = store_dir.join("bench-scratch");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    let result = match args.name {
        BenchName::Wake => wake(store_dir, args),
        BenchName::Commits => commits(&scratch, args),
        BenchName::Mixed => mixed(&scratch, args),
        BenchName::Reads => reads(&scratch, args),
        BenchName::Coldwake => coldwake(&scratch, args),
        BenchName::Soak => soak(&scratch, args),
        BenchName::Takeover => takeover(&scratch, args),
        BenchName::History => history(&scratch, args),
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let mut result = result?;
    if args.json {
        result["machine"] = machine;
        println!("{result}");
    }
    Ok(())
}

/// The page cache every `mixed` and `reads` connection gets, shoal's and the unix VFS's
/// alike (2 MB).
const CACHE: &str = "PRAGMA cache_size = -2000;";

/// The PostgreSQL server the shoal columns run on (`shoal --kv postgresql://...`);
/// fjall when unset.
pub static POSTGRES: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn kv_store(dir: &Path, durability: Durability) -> anyhow::Result<Store> {
    kv_store_with(dir, durability, true)
}

/// [`kv_store`], with history on (the default retention) or off.
fn kv_store_with(dir: &Path, durability: Durability, history: bool) -> anyhow::Result<Store> {
    let defaults = Config::default();
    let keep = if history { defaults.history_keep } else { None };
    let max_bytes = defaults.history_max_bytes;
    let config = defaults
        .with_history(keep, max_bytes)
        .with_backing(Backing::DEFAULT)
        .with_kv_engine(KvEngine::Fjall)
        .with_durability(durability)
        .with_max_awake(Some(100_000));
    let config = match POSTGRES.get() {
        // Each store a schema of its own (created on first use), as each fjall store
        // has a directory of its own.
        Some(url) => {
            static STORES: AtomicU64 = AtomicU64::new(0);
            let schema = format!(
                "shoal_bench_{}_{}",
                std::process::id(),
                STORES.fetch_add(1, Ordering::Relaxed)
            );
            let sep = if url.contains('?') { '&' } else { '?' };
            config.with_postgres(format!("{url}{sep}options=-csearch_path%3D{schema}"))
        }
        None => config,
    };
    Ok(Store::open(dir, config)?)
}

// ---------------------------------------------------------------- wake

fn wake(store_dir: &Path, args: &BenchArgs) -> anyhow::Result<Value> {
    let exe = std::env::current_exe()?;
    let mut runs = Vec::new();
    for &n in &args.wake_actors {
        for backing in ["kv", "files", "files-tuned"] {
            let out = std::process::Command::new(&exe)
                .arg("--store")
                .arg(store_dir)
                // Every actor stays awake, past what the budget alone would allow:
                // the figure this measures is the cost of each awake actor.
                .args(["--max-awake", &n.to_string()])
                .args([
                    "--backing",
                    backing,
                    "wake",
                    "--actors",
                    &n.to_string(),
                    "--json",
                ])
                .stderr(std::process::Stdio::inherit())
                .output()?;
            if !out.status.success() {
                bail!("shoal wake --backing {backing} --actors {n} failed");
            }
            let run: Value = serde_json::from_slice(&out.stdout)?;
            if !args.json {
                println!(
                    "{n:>6} actors  {backing:<12} per actor {:>6.1} KB  peak +{:>7.1} MB  spike RSS {:>7.1} MB (anon {:>7.1}, file {:>7.1})  wake p50 {:>6} us  p99 {:>6} us",
                    run["per_actor_kb"].as_f64().unwrap_or(0.0),
                    run["peak_growth_kb"].as_f64().unwrap_or(0.0) / 1024.0,
                    run["spike_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
                    run["spike_rss_anon_kb"].as_f64().unwrap_or(0.0) / 1024.0,
                    run["spike_rss_file_kb"].as_f64().unwrap_or(0.0) / 1024.0,
                    run["wake_p50_us"],
                    run["wake_p99_us"],
                );
            }
            runs.push(run);
        }
    }
    Ok(json!({ "bench": "wake", "runs": runs }))
}

// ---------------------------------------------------------------- commits

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CommitVariant {
    ShoalFull,
    /// Durable, each commit flushing on its own (no group commit).
    ShoalSolo,
    FilesDelete,
    FilesWal,
    ShoalRelaxed,
    FilesWalNormal,
    /// shoal full with history off (the cost of history is the ratio to `ShoalFull`).
    ShoalFullNoHistory,
    /// shoal relaxed with history off.
    ShoalRelaxedNoHistory,
}

impl CommitVariant {
    const ALL: [CommitVariant; 8] = [
        CommitVariant::ShoalFull,
        CommitVariant::ShoalSolo,
        CommitVariant::FilesDelete,
        CommitVariant::FilesWal,
        CommitVariant::ShoalRelaxed,
        CommitVariant::FilesWalNormal,
        CommitVariant::ShoalFullNoHistory,
        CommitVariant::ShoalRelaxedNoHistory,
    ];

    fn name(self) -> &'static str {
        match self {
            CommitVariant::ShoalFull => "shoal full",
            CommitVariant::ShoalSolo => "shoal full, own flushes",
            CommitVariant::FilesDelete => "files DELETE FULL",
            CommitVariant::FilesWal => "files WAL FULL",
            CommitVariant::ShoalRelaxed => "shoal relaxed",
            CommitVariant::FilesWalNormal => "files WAL NORMAL",
            CommitVariant::ShoalFullNoHistory => "shoal full, history off",
            CommitVariant::ShoalRelaxedNoHistory => "shoal relaxed, history off",
        }
    }

    fn key(self) -> &'static str {
        match self {
            CommitVariant::ShoalFull => "shoal_full",
            CommitVariant::ShoalSolo => "shoal_full_own_flushes",
            CommitVariant::FilesDelete => "files_delete_full",
            CommitVariant::FilesWal => "files_wal_full",
            CommitVariant::ShoalRelaxed => "shoal_relaxed",
            CommitVariant::FilesWalNormal => "files_wal_normal",
            CommitVariant::ShoalFullNoHistory => "shoal_full_history_off",
            CommitVariant::ShoalRelaxedNoHistory => "shoal_relaxed_history_off",
        }
    }
}

fn file_conn(path: &Path, pragmas: &str) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute_batch(pragmas)?;
    Ok(conn)
}

/// What one configuration of `commits` measured.
struct CommitRun {
    per_s: f64,
    /// Bytes the process wrote to disk per commit (`write_bytes` of /proc/self/io, NaN
    /// where it is not reported), from the start of the timed run to the end of the close:
    /// for files the checkpoint of every WAL into its database (TRUNCATE) is counted, for
    /// shoal the store's close (its last flush). fjall's compactions are counted as they
    /// run; one not started by the close is not.
    bytes_per_commit: f64,
    /// The largest RSS sampled during the timed run (every 100 ms), in KiB.
    max_rss_kb: u64,
    /// The store's memory budget in bytes (0 for files).
    budget: u64,
}

/// Durable commits per second: `n` actors, each with its own connection, shared by a pool
/// of at most `threads` threads that commit one small insert at a time, round robin.
fn run_commits(
    dir: &Path,
    variant: CommitVariant,
    n: usize,
    threads: usize,
    seconds: f64,
) -> anyhow::Result<CommitRun> {
    std::fs::create_dir_all(dir)?;
    let store = match variant {
        CommitVariant::ShoalFull => Some(kv_store(dir, Durability::Full)?),
        CommitVariant::ShoalSolo => {
            let store = kv_store(dir, Durability::Full)?;
            #[cfg(feature = "kv-vfs")]
            if let Some(vfs) = store.vfs() {
                vfs.kv().set_group_commit(false);
            }
            Some(store)
        }
        CommitVariant::ShoalRelaxed => Some(kv_store(dir, Durability::Relaxed)?),
        CommitVariant::ShoalFullNoHistory => Some(kv_store_with(dir, Durability::Full, false)?),
        CommitVariant::ShoalRelaxedNoHistory => {
            Some(kv_store_with(dir, Durability::Relaxed, false)?)
        }
        _ => None,
    };
    let pragmas = match variant {
        CommitVariant::FilesDelete => "PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL;",
        CommitVariant::FilesWal => "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;",
        CommitVariant::FilesWalNormal => "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        _ => "",
    };
    let open = |i: usize| -> anyhow::Result<Connection> {
        let conn = match &store {
            Some(store) => store.open_actor(&format!("c{i:05}"))?,
            None => file_conn(&dir.join(format!("c{i:05}.db")), pragmas)?,
        };
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB); INSERT INTO t(v) VALUES (zeroblob(100));")?;
        Ok(conn)
    };
    let files = store.is_none();
    let threads = threads.clamp(1, n.max(1));
    let start = Barrier::new(threads + 1);
    let stop = AtomicBool::new(false);
    let commits = AtomicU64::new(0);
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let mut written_before = 0;
    let mut max_rss_kb = 0;
    let elapsed = std::thread::scope(|s| {
        for t in 0..threads {
            let (open, start, stop, commits, failure) = (&open, &start, &stop, &commits, &failure);
            s.spawn(move || {
                let conns: anyhow::Result<Vec<Connection>> =
                    (t..n).step_by(threads).map(open).collect();
                start.wait();
                let run = || -> anyhow::Result<()> {
                    let conns = conns?;
                    let mut stmts = conns
                        .iter()
                        .map(|c| c.prepare("INSERT INTO t(v) VALUES (zeroblob(100))"))
                        .collect::<Result<Vec<_>, _>>()?;
                    while !stop.load(Ordering::Relaxed) {
                        for stmt in &mut stmts {
                            stmt.execute([])?;
                            commits.fetch_add(1, Ordering::Relaxed);
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                    }
                    drop(stmts);
                    if files {
                        // What the WALs hold is still to be written into the databases.
                        for conn in &conns {
                            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
                        }
                    }
                    Ok(())
                };
                if let Err(e) = run() {
                    stop.store(true, Ordering::Relaxed);
                    if let Ok(mut f) = failure.lock() {
                        f.get_or_insert(e);
                    }
                }
            });
        }
        start.wait();
        let t0 = Instant::now();
        written_before = shoal::memory::io_write_bytes().unwrap_or(0);
        let end = Duration::from_secs_f64(seconds);
        while let Some(left) = end.checked_sub(t0.elapsed()) {
            max_rss_kb = max_rss_kb.max(shoal::memory::rss_kb().unwrap_or(0));
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
        stop.store(true, Ordering::Relaxed);
        t0.elapsed().as_secs_f64()
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e.context(format!("{} with {n} actors", variant.name())));
    }
    let budget = store.as_ref().map_or(0, |s| s.config().memory_budget);
    drop(store);
    let written = shoal::memory::io_write_bytes().map_or(f64::NAN, |after| {
        after.saturating_sub(written_before) as f64
    });
    let commits = commits.into_inner() as f64;
    Ok(CommitRun {
        per_s: commits / elapsed,
        bytes_per_commit: written / commits.max(1.0),
        max_rss_kb,
        budget,
    })
}

fn commits(scratch: &Path, args: &BenchArgs) -> anyhow::Result<Value> {
    let mut rows = Vec::new();
    let mut bytes_rows = Vec::new();
    if !args.json {
        println!(
            "{:>6}  {:>14} {:>14} {:>18} {:>15} {:>14} {:>17}   {:>10} {:>10}",
            "actors",
            "shoal full",
            "own flushes",
            "files DELETE FULL",
            "files WAL FULL",
            "shoal relaxed",
            "files WAL NORMAL",
            "vs WAL",
            "relaxed vs"
        );
        println!(
            "{:>6}  (history off: shoal full, relaxed, and history on / off for each)",
            ""
        );
    }
    let seconds = args.seconds.unwrap_or(2.0);
    let actors = if args.actors.is_empty() {
        &[1, 16, 256, 1000][..]
    } else {
        &args.actors
    };
    for &n in actors {
        let mut row = serde_json::Map::new();
        row.insert("actors".into(), json!(n));
        let mut rates = Vec::new();
        let mut bytes = Vec::new();
        for variant in CommitVariant::ALL {
            // Group commit off is measured on the server backend, or when asked for.
            let skipped = if args.only.is_empty() {
                variant == CommitVariant::ShoalSolo && POSTGRES.get().is_none()
            } else {
                !args.only.iter().any(|o| o == variant.key())
            };
            if skipped {
                rates.push(f64::NAN);
                bytes.push(f64::NAN);
                continue;
            }
            let dir = scratch.join(format!("commits-{n}-{}", variant.key()));
            let run = run_commits(&dir, variant, n, args.threads, seconds)?;
            let _ = std::fs::remove_dir_all(&dir);
            row.insert(format!("{}_per_s", variant.key()), json!(run.per_s.round()));
            row.insert(
                format!("{}_bytes_per_commit", variant.key()),
                json!(run.bytes_per_commit.round()),
            );
            rates.push(run.per_s);
            bytes.push(run.bytes_per_commit);
        }
        let ratio = |a: f64, b: f64| a / b.max(f64::MIN_POSITIVE);
        let rounded = |x: f64| json!((x * 100.0).round() / 100.0);
        let speedup = ratio(rates[0], rates[3]);
        let relaxed_speedup = ratio(rates[4], rates[5]);
        let bytes_vs_wal = ratio(bytes[0], bytes[3]);
        let relaxed_bytes_vs = ratio(bytes[4], bytes[5]);
        row.insert("speedup_vs_files_wal".into(), rounded(speedup));
        row.insert(
            "relaxed_speedup_vs_files_wal_normal".into(),
            rounded(relaxed_speedup),
        );
        row.insert("bytes_vs_files_wal".into(), rounded(bytes_vs_wal));
        row.insert(
            "relaxed_bytes_vs_files_wal_normal".into(),
            rounded(relaxed_bytes_vs),
        );
        if !args.json {
            println!(
                "{n:>6}  {:>12.0}/s {:>12.0}/s {:>16.0}/s {:>13.0}/s {:>12.0}/s {:>15.0}/s   {speedup:>9.2}x {relaxed_speedup:>9.2}x",
                rates[0], rates[1], rates[2], rates[3], rates[4], rates[5]
            );
            println!(
                "{:>6}  {:>12.0}/s {:>12.0}/s   history on / off {:>5.2}x full, {:>5.2}x relaxed",
                "",
                rates[6],
                rates[7],
                ratio(rates[0], rates[6]),
                ratio(rates[4], rates[7])
            );
        }
        row.insert(
            "history_cost_full".into(),
            rounded(ratio(rates[0], rates[6])),
        );
        row.insert(
            "history_cost_relaxed".into(),
            rounded(ratio(rates[4], rates[7])),
        );
        bytes_rows.push((n, bytes, bytes_vs_wal, relaxed_bytes_vs));
        rows.push(Value::Object(row));
    }
    if !args.json {
        println!("\nbytes written to disk per commit (checkpoints and the close included)");
        if POSTGRES.get().is_some() {
            println!("(by this process: the PostgreSQL server's own writes are not counted)");
        }
        for (n, b, vs_wal, relaxed_vs) in bytes_rows {
            println!(
                "{n:>6}  {:>14.0} {:>14.0} {:>18.0} {:>15.0} {:>14.0} {:>17.0}   {vs_wal:>9.2}x {relaxed_vs:>9.2}x   history off {:>6.0} {:>6.0}",
                b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]
            );
        }
    }
    Ok(json!({ "bench": "commits", "threads": args.threads, "seconds": seconds, "results": rows }))
}

// ---------------------------------------------------------------- soak

/// What a store may hold while `n` actors write: its budget plus 32 KB per actor.
const SOAK_PER_ACTOR_KB: u64 = 32;

/// `n` actors committing for `seconds` (1,000 and 60 unless `--actors` and `--seconds`
/// say otherwise), at both durabilities: the largest RSS sampled against the budget plus
/// 32 KB per actor.
fn soak(scratch: &Path, args: &BenchArgs) -> anyhow::Result<Value> {
    let n = match args.actors.as_slice() {
        [] => 1000,
        [n] => *n,
        other => bail!("soak takes one actor count, not {other:?}"),
    };
    let seconds = args.seconds.unwrap_or(60.0);
    let mut rows = Vec::new();
    for variant in [CommitVariant::ShoalFull, CommitVariant::ShoalRelaxed] {
        let dir = scratch.join(format!("soak-{}", variant.key()));
        let run = run_commits(&dir, variant, n, args.threads, seconds)?;
        let _ = std::fs::remove_dir_all(&dir);
        let limit_kb = run.budget / 1024 + SOAK_PER_ACTOR_KB * n as u64;
        if !args.json {
            println!(
                "{:<14} {n} actors, {seconds:.0} s: {:.0} commits/s, max RSS {:.1} MB against budget + {SOAK_PER_ACTOR_KB} KB/actor {:.1} MB ({:.2}x)",
                variant.name(),
                run.per_s,
                run.max_rss_kb as f64 / 1024.0,
                limit_kb as f64 / 1024.0,
                run.max_rss_kb as f64 / limit_kb as f64
            );
        }
        rows.push(json!({
            "variant": variant.key(), "actors": n, "seconds": seconds,
            "per_s": run.per_s.round(), "max_rss_kb": run.max_rss_kb, "limit_kb": limit_kb,
        }));
    }
    Ok(json!({ "bench": "soak", "results": rows }))
}

// ---------------------------------------------------------------- mixed

/// speedtest1's number names: 123 -> "one hundred twenty three".
fn number_name(mut n: u64) -> String {
    const ONES: [&str; 20] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ];
    const TENS: [&str; 10] = [
        "", "ten", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    ];
    let mut out = Vec::new();
    for (unit, name) in [
        (1_000_000_000, "billion"),
        (1_000_000, "million"),
        (1_000, "thousand"),
        (100, "hundred"),
    ] {
        if n >= unit {
            out.push(number_name(n / unit));
            out.push(name.to_owned());
            n %= unit;
        }
    }
    if n >= 20 {
        out.push(TENS[(n / 10) as usize].to_owned());
        n %= 10;
    }
    if n > 0 || out.is_empty() {
        out.push(ONES[n as usize].to_owned());
    }
    out.join(" ")
}

/// Rows of about 1 KB in the large table of `mixed` (tests 700 to 720).
const LARGE_ROWS: u64 = 96_000;

type MixedTest = (
    &'static str,
    fn(&Connection, u64, &mut fastrand::Rng) -> rusqlite_result::Result<()>,
);

mod rusqlite_result {
    pub use shoal::rusqlite::Result;
}

/// The tests, after speedtest1.c's list (each in one transaction, as speedtest1 runs them).
fn mixed_tests() -> Vec<MixedTest> {
    vec![
        ("100 INSERTs into a table with no index", |c, n, r| {
            c.execute_batch("CREATE TABLE z1(a INTEGER, b INTEGER, c TEXT);")?;
            let tx = c.unchecked_transaction()?;
            let mut s = tx.prepare("INSERT INTO z1 VALUES (?1, ?2, ?3)")?;
            for i in 1..=n {
                let x = r.u64(..n * 4);
                s.execute((x as i64, i as i64, number_name(x)))?;
            }
            drop(s);
            tx.commit()
        }),
        ("110 ordered INSERTs with one index/PK", |c, n, r| {
            c.execute_batch("CREATE TABLE z2(a INTEGER PRIMARY KEY, b INTEGER, c TEXT);")?;
            let tx = c.unchecked_transaction()?;
            let mut s = tx.prepare("INSERT INTO z2 VALUES (?1, ?2, ?3)")?;
            for i in 1..=n {
                let x = r.u64(..n * 4);
                s.execute((i as i64, x as i64, number_name(x)))?;
            }
            drop(s);
            tx.commit()
        }),
        ("120 unordered INSERTs with one index/PK", |c, n, r| {
            c.execute_batch("CREATE TABLE t3(a INTEGER PRIMARY KEY, b INTEGER, c TEXT);")?;
            let tx = c.unchecked_transaction()?;
            let mut s = tx.prepare("INSERT OR IGNORE INTO t3 VALUES (?1, ?2, ?3)")?;
            for _ in 1..=n {
                let x = r.u64(..n * 4);
                s.execute((x as i64, (x / 2) as i64, number_name(x)))?;
            }
            drop(s);
            tx.commit()
        }),
        ("130 SELECTs, numeric BETWEEN, unindexed", |c, n, r| {
            let tx = c.unchecked_transaction()?;
            let mut s = tx.prepare(
                "SELECT count(*), avg(b), sum(length(c)) FROM z1 WHERE b BETWEEN ?1 AND ?2",
            )?;
            for _ in 0..(n / 500).max(5) {
                let lo = r.u64(..n);
                s.query_row((lo as i64, (lo + 100) as i64), |row| row.get::<_, i64>(0))?;
            }
            drop(s);
            tx.commit()
        }),
        ("140 SELECTs, LIKE, unindexed", |c, n, r| {
            let tx = c.unchecked_transaction()?;
            let mut s = tx.prepare("SELECT count(*), avg(b) FROM z1 WHERE c LIKE ?1")?;
            for _ in 0..(n / 500).max(5) {
                s.query_row([format!("%{}%", number_name(r.u64(..1000)))], |row| {
                    row.get::<_, i64>(0)
                })?;
            }
            drop(s);
            tx.commit()
        }),
        ("150 CREATE INDEX five times", |c, _, _| {
            c.execute_batch(
                "BEGIN;
                 CREATE UNIQUE INDEX t1b ON z1(b); CREATE INDEX t1c ON z1(c);
                 CREATE INDEX t2b ON z2(b); CREATE INDEX t2c ON z2(c DESC);
                 CREATE INDEX t3bc ON t3(b, c);
                 COMMIT;",
            )
        }),
        ("160 SELECTs, numeric BETWEEN, indexed", |c, n, r| {
            let tx = c.unchecked_transaction()?;
            let mut s = tx.prepare(
                "SELECT count(*), avg(b), sum(length(c)) FROM z1 WHERE b BETWEEN ?1 AND ?2",
            )?;
            for _ in 0..n / 5 {
                let lo = r.u64(..n);
                s.query_row((lo as i64, (lo + 100) as i64), |row| row.get::<_, i64>(0))?;
            }
            drop(s);
            tx.commit()
        }),
        ("170 SELECTs, text BETWEEN, indexed", |c, n, r| {
            let tx = c.unchecked_transaction()?;
            let mut s = tx.prepare("SELECT count(*), avg(b), sum(length(c)) FROM z1 WHERE c BETWEEN ?1 AND (?1 || 'z')")?;
            for _ in 0..n / 5 {
                s.query_row([number_name(r.u64(..n))], |row| row.get::<_, i64>(0))?;
            }
            drop(s);
            tx.commit()
        }),
        ("180 INSERTs with three indexes", |c, n, r| {
            c.execute_batch("CREATE TABLE t4(a INTEGER UNIQUE NOT NULL, b INTEGER UNIQUE NOT NULL, c TEXT, d REAL); CREATE INDEX t4c ON t4(c);")?;
            let tx = c.unchecked_transaction()?;
            let mut s = tx.prepare("INSERT OR IGNORE INTO t4 VALUES (?1, ?2, ?3, ?4)")?;
            for i in 1..=n {
                let x = r.u64(..n * 4);
                s.execute((i as i64, x as i64, number_name(x), x as f64 / 7.0))?;
            }
            drop(s);
            tx.commit()
        }),
        ("190 DELETE and REFILL one table", |c, _, _| {
            c.execute_batch("BEGIN; DELETE FROM z2; INSERT INTO z2 SELECT * FROM t3; COMMIT;")
        }),
        ("230 UPDATEs, numeric BETWEEN, indexed", |c, n, r| {
            let tx = c.unchecked_transaction()?;
            let mut s = tx.prepare("UPDATE z2 SET b = b * 2 WHERE a BETWEEN ?1 AND ?2")?;
            for _ in 0..n / 5 {
                let lo = r.u64(..n * 4);
                s.execute((lo as i64, (lo + 50) as i64))?;
            }
            drop(s);
            tx.commit()
        }),
        ("240 UPDATEs of individual rows", |c, n, r| {
            let tx = c.unchecked_transaction()?;
            let mut s = tx.prepare("UPDATE z2 SET c = ?1 WHERE a = ?2")?;
            for _ in 0..n {
                let x = r.u64(..n * 4);
                s.execute((number_name(x), x as i64))?;
            }
            drop(s);
            tx.commit()
        }),
        ("250 one big UPDATE of the whole table", |c, _, _| {
            c.execute_batch("UPDATE z2 SET b = b + a, c = c || 'x'")
        }),
        ("270 DELETEs, numeric BETWEEN, indexed", |c, n, r| {
            let tx = c.unchecked_transaction()?;
            let mut s = tx.prepare("DELETE FROM t3 WHERE a BETWEEN ?1 AND ?2")?;
            for _ in 0..n / 10 {
                let lo = r.u64(..n * 4);
                s.execute((lo as i64, (lo + 20) as i64))?;
            }
            drop(s);
            tx.commit()
        }),
        ("280 DELETEs of individual rows", |c, n, r| {
            let tx = c.unchecked_transaction()?;
            let mut s = tx.prepare("DELETE FROM z2 WHERE a = ?1")?;
            for _ in 0..n {
                s.execute([r.u64(..n * 4) as i64])?;
            }
            drop(s);
            tx.commit()
        }),
        ("290 refill two tables using REPLACE", |c, _, _| {
            c.execute_batch("BEGIN; REPLACE INTO z2(a, b, c) SELECT a, b, c FROM z1; REPLACE INTO t3(a, b, c) SELECT a, b, c FROM z1; COMMIT;")
        }),
        ("310 four-way joins", |c, n, r| {
            let tx = c.unchecked_transaction()?;
            let mut s = tx.prepare(
                "SELECT z1.c FROM z1, z2, t3, t4 WHERE t4.a BETWEEN ?1 AND ?1 + 100 AND t3.a = t4.b AND z2.a = t3.b AND z1.b = z2.a",
            )?;
            for _ in 0..(n / 100).max(10) {
                let mut rows = s.query([r.u64(..n) as i64])?;
                while rows.next()?.is_some() {}
            }
            drop(s);
            tx.commit()
        }),
        ("320 subquery in the result set", |c, n, r| {
            let tx = c.unchecked_transaction()?;
            let mut s = tx.prepare(
                "SELECT t4.a, (SELECT z1.c FROM z1 WHERE z1.b = t4.a LIMIT 1) FROM t4 WHERE t4.a BETWEEN ?1 AND ?1 + 200",
            )?;
            for _ in 0..(n / 100).max(10) {
                let mut rows = s.query([r.u64(..n) as i64])?;
                while rows.next()?.is_some() {}
            }
            drop(s);
            tx.commit()
        }),
        ("400 REPLACE ops on an IPK", |c, n, r| {
            c.execute_batch("CREATE TABLE t5(a INTEGER PRIMARY KEY, b BLOB);")?;
            let tx = c.unchecked_transaction()?;
            let mut s = tx.prepare("REPLACE INTO t5 VALUES (?1, zeroblob(?2))")?;
            for _ in 0..n {
                s.execute((r.u64(..n) as i64, r.u64(10..200) as i64))?;
            }
            drop(s);
            tx.commit()
        }),
        ("410 SELECTs on an IPK", |c, n, r| {
            let tx = c.unchecked_transaction()?;
            let mut s = tx.prepare("SELECT length(b) FROM t5 WHERE a = ?1")?;
            for _ in 0..n {
                let _ = s.query_row([r.u64(..n) as i64], |row| row.get::<_, i64>(0));
            }
            drop(s);
            tx.commit()
        }),
        ("500 REPLACE on TEXT PK", |c, n, r| {
            c.execute_batch("CREATE TABLE t6(a TEXT PRIMARY KEY, b INTEGER) WITHOUT ROWID;")?;
            let tx = c.unchecked_transaction()?;
            let mut s = tx.prepare("REPLACE INTO t6 VALUES (?1, ?2)")?;
            for i in 0..n {
                s.execute((number_name(r.u64(..n)), i as i64))?;
            }
            drop(s);
            tx.commit()
        }),
        ("510 SELECTs on a TEXT PK", |c, n, r| {
            let tx = c.unchecked_transaction()?;
            let mut s = tx.prepare("SELECT b FROM t6 WHERE a = ?1")?;
            for _ in 0..n {
                let _ = s.query_row([number_name(r.u64(..n))], |row| row.get::<_, i64>(0));
            }
            drop(s);
            tx.commit()
        }),
        ("520 SELECT DISTINCT", |c, _, _| {
            c.execute_batch("SELECT DISTINCT b FROM t5; SELECT DISTINCT b FROM t6;")
        }),
        (
            "600 many small transactions (autocommit inserts)",
            |c, n, r| {
                let mut s = c.prepare("INSERT INTO t5(b) VALUES (zeroblob(?1))")?;
                for _ in 0..(n / 50).max(20) {
                    s.execute([r.u64(10..300) as i64])?;
                }
                Ok(())
            },
        ),
        // A working set larger than the kv cache (a quarter of the default 256 MiB budget)
        // and the OS page cache's counterpart for files; its size does not follow --size.
        (
            "700 fill 96 MB of JSON rows (one transaction)",
            |c, _, _| {
                c.execute_batch(&format!(
                "CREATE TABLE w(id INTEGER PRIMARY KEY, v TEXT);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {LARGE_ROWS})
                 INSERT INTO w SELECT i, json_object('n', i, 'pad', hex(randomblob(480))) FROM n;"
            ))
            },
        ),
        (
            "710 JSON updates of random rows of it (autocommit)",
            |c, n, r| {
                let mut s = c.prepare("UPDATE w SET v = json_set(v, '$.n', ?1) WHERE id = ?2")?;
                for i in 0..(n / 10).max(100) {
                    s.execute((i as i64, r.u64(1..=LARGE_ROWS) as i64))?;
                }
                Ok(())
            },
        ),
        ("720 DROP it", |c, _, _| c.execute_batch("DROP TABLE w")),
        ("970 VACUUM", |c, _, _| c.execute_batch("VACUUM")),
        ("980 PRAGMA integrity_check", |c, _, _| {
            let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
            assert_eq!(ok, "ok");
            Ok(())
        }),
        ("990 ANALYZE", |c, _, _| c.execute_batch("ANALYZE")),
    ]
}

/// Runs every mixed test on `conn`; returns seconds per test.
fn run_mixed(conn: &Connection, size: u32) -> anyhow::Result<Vec<f64>> {
    let n = u64::from(size) * 500;
    let mut rng = fastrand::Rng::with_seed(42);
    let mut times = Vec::new();
    for (name, test) in mixed_tests() {
        let t0 = Instant::now();
        test(conn, n, &mut rng).with_context(|| name.to_owned())?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(times)
}

fn mixed(scratch: &Path, args: &BenchArgs) -> anyhow::Result<Value> {
    // shoal with full durability and relaxed, the unix VFS with synchronous FULL and
    // OFF, and SQLite in memory (the floor).
    let configs = [
        "shoal_full",
        "unix_full",
        "shoal_relaxed",
        "unix_off",
        "memory",
    ];
    let mut totals = Vec::new();
    let mut per_test = Vec::new();
    for key in configs {
        let dir = scratch.join(format!("mixed-{key}"));
        std::fs::create_dir_all(&dir)?;
        let store;
        let conn = match key {
            "shoal_full" | "shoal_relaxed" => {
                let durability = if key == "shoal_full" {
                    Durability::Full
                } else {
                    Durability::Relaxed
                };
                store = kv_store(&dir, durability)?;
                let conn = store.open_actor("mixed")?;
                conn.execute_batch(CACHE)?;
                conn
            }
            "unix_full" => file_conn(
                &dir.join("mixed.db"),
                &format!("{CACHE} PRAGMA synchronous=FULL;"),
            )?,
            "unix_off" => file_conn(
                &dir.join("mixed.db"),
                &format!("{CACHE} PRAGMA synchronous=OFF;"),
            )?,
            _ => {
                let c = Connection::open_in_memory()?;
                c.execute_batch(CACHE)?;
                c
            }
        };
        let times = run_mixed(&conn, args.size)?;
        drop(conn);
        totals.push(times.iter().sum::<f64>());
        per_test.push(times);
    }
    let ratio = totals[0] / totals[1];
    let relaxed_ratio = totals[2] / totals[3];
    let names: Vec<&str> = mixed_tests().into_iter().map(|(n, _)| n).collect();
    if !args.json {
        println!(
            "{:<48} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "test (seconds)", "shoal", "unix", "shoal rlx", "unix OFF", "memory"
        );
        for (i, name) in names.iter().enumerate() {
            println!(
                "{name:<48} {:>10.4} {:>10.4} {:>10.4} {:>10.4} {:>10.4}",
                per_test[0][i], per_test[1][i], per_test[2][i], per_test[3][i], per_test[4][i]
            );
        }
        println!(
            "{:<48} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
            "total", totals[0], totals[1], totals[2], totals[3], totals[4]
        );
        println!(
            "time ratio shoal/unix (full sync): {ratio:.3}; shoal relaxed / unix synchronous=OFF: {relaxed_ratio:.3}"
        );
    }
    let tests: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            json!({
                "test": name,
                "shoal_full_s": per_test[0][i], "unix_full_s": per_test[1][i],
                "shoal_relaxed_s": per_test[2][i], "unix_off_s": per_test[3][i], "memory_s": per_test[4][i],
            })
        })
        .collect();
    Ok(json!({
        "bench": "mixed",
        "size": args.size,
        "total_s": { "shoal_full": totals[0], "unix_full": totals[1], "shoal_relaxed": totals[2], "unix_off": totals[3], "memory": totals[4] },
        "time_ratio_vs_unix": { "full": (ratio * 1000.0).round() / 1000.0, "relaxed_vs_off": (relaxed_ratio * 1000.0).round() / 1000.0 },
        "tests": tests,
    }))
}

// ---------------------------------------------------------------- reads

const READ_ROWS: i64 = 100_000;

fn fill_reads(conn: &Connection) -> anyhow::Result<u64> {
    conn.execute_batch(&format!(
        "CREATE TABLE r(id INTEGER PRIMARY KEY, v BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {READ_ROWS})
         INSERT INTO r SELECT i, randomblob(200) FROM n;"
    ))?;
    let bytes: i64 = conn.query_row(
        "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
        [],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(bytes).unwrap_or(0))
}

/// (point reads per second, full-scan MB/s) on `conn`.
fn measure_reads(conn: &Connection, db_bytes: u64) -> anyhow::Result<(f64, f64)> {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut stmt = conn.prepare("SELECT length(v) FROM r WHERE id = ?1")?;
    let lookups = 200_000;
    let t0 = Instant::now();
    for _ in 0..lookups {
        stmt.query_row([rng.i64(1..=READ_ROWS)], |r| r.get::<_, i64>(0))?;
    }
    let point = lookups as f64 / t0.elapsed().as_secs_f64();
    let scans = 5;
    let t0 = Instant::now();
    for _ in 0..scans {
        conn.query_row("SELECT sum(length(v)) FROM r", [], |r| r.get::<_, i64>(0))?;
    }
    let scan = db_bytes as f64 * f64::from(scans) / (1 << 20) as f64 / t0.elapsed().as_secs_f64();
    Ok((point, scan))
}

fn reads(scratch: &Path, args: &BenchArgs) -> anyhow::Result<Value> {
    // shoal: cold is the store reopened (its block cache empty); files: the connection
    // reopened. The OS page cache is warm for both.
    let dir = scratch.join("reads-shoal");
    std::fs::create_dir_all(&dir)?;
    let db_bytes;
    let (shoal_cold, shoal_warm) = {
        {
            let store = kv_store(&dir, Durability::Full)?;
            let conn = store.open_actor("reads")?;
            db_bytes = fill_reads(&conn)?;
        }
        let store = kv_store(&dir, Durability::Full)?;
        let conn = store.open_actor("reads")?;
        conn.execute_batch(CACHE)?;
        let cold = measure_reads(&conn, db_bytes)?;
        let warm = measure_reads(&conn, db_bytes)?;
        (cold, warm)
    };
    let path = scratch.join("reads.db");
    let (unix_cold, unix_warm) = {
        fill_reads(&file_conn(&path, "")?)?;
        let conn = file_conn(&path, CACHE)?;
        let cold = measure_reads(&conn, db_bytes)?;
        let warm = measure_reads(&conn, db_bytes)?;
        (cold, warm)
    };
    let unix_mmap_warm = {
        let conn = file_conn(&path, &format!("{CACHE} PRAGMA mmap_size = 1073741824;"))?;
        measure_reads(&conn, db_bytes)?;
        measure_reads(&conn, db_bytes)?
    };
    let rows = [
        ("shoal cold (store reopened)", shoal_cold),
        ("shoal warm", shoal_warm),
        ("unix VFS cold (connection reopened)", unix_cold),
        ("unix VFS warm", unix_warm),
        ("unix VFS warm, mmap", unix_mmap_warm),
    ];
    if !args.json {
        println!(
            "database of {:.1} MB, {READ_ROWS} rows of 200 bytes",
            db_bytes as f64 / (1 << 20) as f64
        );
        println!("{:<38} {:>16} {:>14}", "", "point reads/s", "scan MB/s");
        for (name, (p, s)) in rows {
            println!("{name:<38} {p:>16.0} {s:>14.1}");
        }
        println!(
            "shoal/unix: point reads {:.2}x warm, {:.2}x cold; scans {:.2}x warm, {:.2}x cold",
            shoal_warm.0 / unix_warm.0,
            shoal_cold.0 / unix_cold.0,
            shoal_warm.1 / unix_warm.1,
            shoal_cold.1 / unix_cold.1
        );
    }
    let entry = |(p, s): (f64, f64)| json!({ "point_reads_per_s": p.round(), "scan_mb_per_s": (s * 10.0).round() / 10.0 });
    Ok(json!({
        "bench": "reads",
        "db_bytes": db_bytes,
        "shoal_cold": entry(shoal_cold), "shoal_warm": entry(shoal_warm),
        "unix_cold": entry(unix_cold), "unix_warm": entry(unix_warm), "unix_mmap_warm": entry(unix_mmap_warm),
        "ratio_vs_unix": {
            "point_warm": shoal_warm.0 / unix_warm.0, "point_cold": shoal_cold.0 / unix_cold.0,
            "scan_warm": shoal_warm.1 / unix_warm.1, "scan_cold": shoal_cold.1 / unix_cold.1,
        },
    }))
}

// ---------------------------------------------------------------- coldwake

fn percentiles(h: &Histogram<u64>) -> Value {
    json!({ "p50_us": h.value_at_quantile(0.5), "p99_us": h.value_at_quantile(0.99), "max_us": h.max(), "count": h.len() })
}

fn coldwake(scratch: &Path, args: &BenchArgs) -> anyhow::Result<Value> {
    let n = args.cold_actors.max(1);
    let messages = 250;
    let mut results = serde_json::Map::new();
    for backing in [Backing::DEFAULT, Backing::Files, Backing::FilesTuned] {
        let dir: PathBuf = scratch.join(format!("coldwake-{}", backing.as_str()));
        let config = || {
            Config::default()
                .with_backing(backing)
                .with_max_awake(Some(n + 1))
        };
        {
            let store = Store::open(&dir, config())?;
            for i in 0..n {
                let conn = store.open_actor(&format!("cold-{i:05}"))?;
                workload::populate(&conn, messages, i as u64)?;
            }
        }
        // A new store: nothing of these actors is cached in the process.
        let store = Store::open(&dir, config())?;
        let mut hist = Histogram::<u64>::new(3)?;
        for i in 0..n {
            let t0 = Instant::now();
            let actor = store.actor(&format!("cold-{i:05}"))?;
            workload::open_task_detail(&actor, 1_900_000_000)?;
            drop(actor);
            hist.record(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX))?;
        }
        let size = store.actor_stats("cold-00000")?.size;
        if !args.json {
            println!(
                "{:<12} {n} cold actors of {:.0} KB: wake (open + task detail) p50 {} us, p99 {} us, max {} us",
                backing.as_str(),
                size as f64 / 1024.0,
                hist.value_at_quantile(0.5),
                hist.value_at_quantile(0.99),
                hist.max()
            );
        }
        let mut entry = percentiles(&hist);
        entry["actor_bytes"] = json!(size);
        results.insert(backing.as_str().to_owned(), entry);
    }
    Ok(json!({ "bench": "coldwake", "actors": n, "results": results }))
}

// ---------------------------------------------------------------- history

#[cfg(feature = "kv-vfs")]
/// Fills actor `name` with `mb` MiB of 4000-byte rows; returns the rows.
fn fill_history(store: &Store, name: &str, mb: u64) -> anyhow::Result<i64> {
    let rows = i64::try_from(mb * 256)?;
    let conn = store.open_actor(name)?;
    conn.execute_batch(&format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER, b BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {rows})
         INSERT INTO t(v, b) SELECT 0, randomblob(4000) FROM n;"
    ))?;
    Ok(rows)
}

#[cfg(feature = "kv-vfs")]
/// Milliseconds `f` takes, the median of `n` runs.
fn median_ms(n: usize, mut f: impl FnMut(usize) -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times.get(n / 2).copied().unwrap_or(f64::NAN))
}

#[cfg(feature = "kv-vfs")]
/// Random point reads of the current state per second, over `rows` rows.
fn point_reads(conn: &Connection, rows: i64, n: usize) -> anyhow::Result<f64> {
    let mut rng = fastrand::Rng::with_seed(42);
    let mut stmt = conn.prepare("SELECT length(b) + v FROM t WHERE id = ?1")?;
    let t = Instant::now();
    for _ in 0..n {
        let _: i64 = stmt.query_row([rng.i64(1..=rows)], |r| r.get(0))?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// What history costs and gives: fork time against actor size, restore time, and the
/// reads of the current state with history kept against none (commits: `bench commits`,
/// its history-off columns).
#[cfg(feature = "kv-vfs")]
fn history(scratch: &Path, args: &BenchArgs) -> anyhow::Result<Value> {
    use shoal::PointInTime;
    let mut runs = Vec::new();
    if !args.json {
        println!(
            "{:>8}  {:>10} {:>16} {:>20} {:>22} {:>18}",
            "actor",
            "fork",
            "restore 1 row",
            "restore 10% of rows",
            "reads, history on",
            "on / off"
        );
    }
    for &mb in &args.history_mb {
        let dir_on = scratch.join(format!("history-{mb}-on"));
        let dir_off = scratch.join(format!("history-{mb}-off"));
        std::fs::create_dir_all(&dir_on)?;
        std::fs::create_dir_all(&dir_off)?;
        let on = kv_store_with(&dir_on, Durability::Full, true)?;
        let off = kv_store_with(&dir_off, Durability::Full, false)?;
        let rows = fill_history(&on, "a", mb)?;
        fill_history(&off, "a", mb)?;
        let fork_ms = median_ms(5, |i| {
            on.fork_actor("a", None, &format!("f{i}"))?;
            Ok(())
        })?;
        // Restore one commit back, after a one-row update.
        let update = |store: &Store, sql: &str| -> anyhow::Result<()> {
            store.open_actor("a")?.execute_batch(sql)?;
            Ok(())
        };
        let restore_one_ms = median_ms(5, |i| {
            let before = on.vfs().map(|v| v.kv().current_bookmark("a")).transpose()?;
            update(&on, &format!("UPDATE t SET v = v + 1 WHERE id = {}", i + 1))?;
            if let Some(b) = before {
                on.restore_actor("a", &PointInTime::Bookmark(b))?;
            }
            Ok(())
        })?;
        let restore_tenth_ms = median_ms(3, |_| {
            let before = on.vfs().map(|v| v.kv().current_bookmark("a")).transpose()?;
            update(&on, "UPDATE t SET v = v + 1 WHERE id % 10 = 0")?;
            if let Some(b) = before {
                on.restore_actor("a", &PointInTime::Bookmark(b))?;
            }
            Ok(())
        })?;
        let kv = on.vfs().map(|v| std::sync::Arc::clone(v.kv()));
        let disk_of = |kv: &Option<std::sync::Arc<shoal_kv::Kv>>| -> anyhow::Result<(u64, u64)> {
            Ok(match kv {
                Some(kv) => {
                    kv.compact()?;
                    let s = kv.stats()?;
                    (s.disk_bytes, s.garbage_bytes)
                }
                None => (0, 0),
            })
        };
        let disk_without = disk_of(&kv)?;
        // The same 200 small updates on both, then reads of the current state.
        for i in 0..200 {
            let sql = format!("UPDATE t SET v = v + 1 WHERE id % 97 = {}", i % 97);
            update(&on, &sql)?;
            update(&off, &sql)?;
        }
        let reads = rows.clamp(1, 20_000) as usize * 2;
        let (mut r_on, mut r_off) = (0.0f64, 0.0f64);
        let (c_on, c_off) = (on.open_actor("a")?, off.open_actor("a")?);
        c_on.execute_batch(CACHE)?;
        c_off.execute_batch(CACHE)?;
        // Alternated, best of three each: the machine is shared.
        for _ in 0..3 {
            r_on = r_on.max(point_reads(&c_on, rows, reads)?);
            r_off = r_off.max(point_reads(&c_off, rows, reads)?);
        }
        let usage = on.actor_history_usage("a")?;
        // Collection, measured on disk: with the forks gone (they hold the history after
        // their fork point), every commit past a retention of zero goes, then the engine
        // rewrites its files.
        for i in 0..5 {
            on.delete_actor(&format!("f{i}"))?;
        }
        let disk_before = disk_of(&kv)?;
        if let Some(kv) = &kv {
            kv.set_retention(shoal_kv::Retention::keep(Duration::ZERO, 0));
        }
        on.collect_history()?;
        let disk_after = disk_of(&kv)?;
        // fjall rewrites a quarter of the stale blob files at each compaction.
        let mut disk_later = disk_after;
        for _ in 0..7 {
            disk_later = disk_of(&kv)?;
        }
        let history_after = on.actor_history_usage("a")?.bytes;
        if !args.json {
            println!(
                "{:>5} MB  {fork_ms:>7.2} ms {restore_one_ms:>13.2} ms {restore_tenth_ms:>17.1} ms {r_on:>18.0}/s {:>17.2}x",
                mb,
                r_on / r_off.max(f64::MIN_POSITIVE)
            );
        }
        if !args.json {
            println!(
                "{:>8}  history {:.1} MB in {} commits, collected to {:.1} MB; store on disk (compacted) {:.1} MB before the updates, {:.1} MB with their history, {:.1} MB after collection ({:.1} MB stale in blob files), {:.1} MB ({:.1} stale) after 7 more compactions",
                "",
                usage.bytes as f64 / 1e6,
                usage.commits,
                history_after as f64 / 1e6,
                disk_without.0 as f64 / 1e6,
                disk_before.0 as f64 / 1e6,
                disk_after.0 as f64 / 1e6,
                disk_after.1 as f64 / 1e6,
                disk_later.0 as f64 / 1e6,
                disk_later.1 as f64 / 1e6
            );
        }
        runs.push(json!({
            "actor_mb": mb,
            "fork_ms": (fork_ms * 100.0).round() / 100.0,
            "restore_one_row_ms": (restore_one_ms * 100.0).round() / 100.0,
            "restore_tenth_ms": (restore_tenth_ms * 10.0).round() / 10.0,
            "reads_per_s_history_on": r_on.round(),
            "reads_per_s_history_off": r_off.round(),
            "history_bytes": usage.bytes,
            "history_commits": usage.commits,
            "history_bytes_collected_to": history_after,
            "disk_bytes_before_updates": disk_without.0,
            "disk_bytes_before_collection": disk_before.0,
            "disk_bytes_after_collection": disk_after.0,
            "stale_blob_bytes_after_collection": disk_after.1,
            "disk_bytes_after_8_compactions": disk_later.0,
            "stale_blob_bytes_after_8_compactions": disk_later.1,
        }));
        drop((c_on, c_off, on, off));
        let _ = std::fs::remove_dir_all(&dir_on);
        let _ = std::fs::remove_dir_all(&dir_off);
    }
    Ok(json!({ "bench": "history", "runs": runs }))
}

#[cfg(not(feature = "kv-vfs"))]
fn history(_scratch: &Path, _args: &BenchArgs) -> anyhow::Result<Value> {
    bail!("bench history needs the kv backing, which this shoal was built without")
}
