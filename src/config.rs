//! How a [`crate::Store`] is opened: the backing, the one memory budget, and the
//! connection tuning derived from it.

use std::time::Duration;

pub use shoal_vfs::Durability;

use crate::error::Error;

/// Where actor databases live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Pages in the shared key-value store, through the shoal VFS (feature `kv-vfs`).
    #[cfg(feature = "kv-vfs")]
    Kv,
    /// One plain SQLite file per actor with SQLite's defaults: what a user does today.
    Files,
    /// One plain file per actor with the same pragmas as `Kv` actors, so the VFS's own
    /// effect can be told apart from pragma tuning.
    FilesTuned,
}

impl Backing {
    /// Every backing this build has, the default first.
    pub const ALL: &'static [Backing] = &[
        #[cfg(feature = "kv-vfs")]
        Backing::Kv,
        Backing::Files,
        Backing::FilesTuned,
    ];

    /// The default backing of this build: `Kv` with feature `kv-vfs`, else `Files`.
    pub const DEFAULT: Backing = {
        #[cfg(feature = "kv-vfs")]
        {
            Backing::Kv
        }
        #[cfg(not(feature = "kv-vfs"))]
        {
            Backing::Files
        }
    };

    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            #[cfg(feature = "kv-vfs")]
            Backing::Kv => "kv",
            Backing::Files => "files",
            Backing::FilesTuned => "files-tuned",
        }
    }

    /// Whether actors live in the shared key-value store (always `false` without
    /// feature `kv-vfs`).
    pub fn is_kv(self) -> bool {
        !matches!(self, Backing::Files | Backing::FilesTuned)
    }

    /// Whether actor connections get shoal's tuning (small cache, mmap reads, no
    /// lookaside, a soft heap limit).
    pub fn tuned(self) -> bool {
        self != Backing::Files
    }
}

impl Default for Backing {
    fn default() -> Backing {
        Backing::DEFAULT
    }
}

impl std::fmt::Display for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Backing {
    type Err = Error;

    /// Parses `kv`, `files` or `files-tuned` (what [`Backing::as_str`] gives); `kv`
    /// fails with [`Error::NotBuilt`] without feature `kv-vfs`.
    fn from_str(s: &str) -> Result<Backing, Error> {
        match s {
            #[cfg(feature = "kv-vfs")]
            "kv" => Ok(Backing::Kv),
            #[cfg(not(feature = "kv-vfs"))]
            "kv" => Err(Error::NotBuilt {
                feature: "kv-vfs",
                what: "the kv backing",
            }),
            "files" => Ok(Backing::Files),
            "files-tuned" => Ok(Backing::FilesTuned),
            other => Err(Error::UnknownName {
                what: "backing",
                given: other.to_owned(),
                expected: "kv, files or files-tuned",
            }),
        }
    }
}

/// Which embedded key-value store holds the pages (kv backing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvEngine {
    /// fjall 3 (an LSM tree, pages in blob files beside it): memory stays within its cache
    /// and write buffer. The default,
    /// because sled's does not (docs/BENCHMARKS.md).
    #[default]
    Fjall,
    /// sled 0.34: fast batches and flushes, but its memory grows well past its configured
    /// cache when many pages are read.
    Sled,
    /// A PostgreSQL server that several hosts share (feature `postgres`): one table of
    /// pages, each actor written by the one host holding its lease. Chosen with
    /// [`Config::with_postgres`], which gives the server's URL; the store directory then
    /// holds only this host's lock and import staging.
    Postgres,
}

impl KvEngine {
    /// Every embedded engine this build can open, the default first: fjall with feature
    /// `kv-vfs`, sled with feature `sled` (none without `kv-vfs`). PostgreSQL, which needs
    /// a server, is not among them.
    pub const ALL: &'static [KvEngine] = &[
        #[cfg(feature = "kv-vfs")]
        KvEngine::Fjall,
        #[cfg(feature = "sled")]
        KvEngine::Sled,
    ];

    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            KvEngine::Fjall => "fjall",
            KvEngine::Sled => "sled",
            KvEngine::Postgres => "postgres",
        }
    }
}

impl std::fmt::Display for KvEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KvEngine {
    type Err = Error;

    /// Parses `fjall`, `sled` or `postgres`, in every build (opening a store on an engine
    /// the build lacks is [`Error::NotBuilt`]).
    fn from_str(s: &str) -> Result<KvEngine, Error> {
        match s {
            "fjall" => Ok(KvEngine::Fjall),
            "sled" => Ok(KvEngine::Sled),
            "postgres" => Ok(KvEngine::Postgres),
            other => Err(Error::UnknownName {
                what: "kv engine",
                given: other.to_owned(),
                expected: "fjall, sled or postgres",
            }),
        }
    }
}

/// Where a store directory keeps its actors: what [`Config::backing`] and
/// [`Config::kv_engine`] choose. A store holds one; opening it with another is refused
/// ([`crate::Error::WrongLayout`]) instead of starting an empty store beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreLayout {
    /// Pages in the shared key-value store, kept by this engine (`kv-fjall/`, `kv-sled/`).
    Kv(KvEngine),
    /// One SQLite file per actor (`actors/`), for [`Backing::Files`] and
    /// [`Backing::FilesTuned`] alike.
    Files,
}

impl StoreLayout {
    /// Every layout, in the order a store directory is searched for them.
    pub(crate) const ALL: [StoreLayout; 4] = [
        StoreLayout::Kv(KvEngine::Fjall),
        StoreLayout::Kv(KvEngine::Sled),
        StoreLayout::Kv(KvEngine::Postgres),
        StoreLayout::Files,
    ];

    /// The layout `config` asks for.
    pub fn of(config: &Config) -> StoreLayout {
        if config.backing.is_kv() {
            StoreLayout::Kv(config.kv_engine)
        } else {
            StoreLayout::Files
        }
    }

    /// The subdirectory of the store that holds this layout's files.
    pub(crate) fn dir_name(self) -> &'static str {
        match self {
            StoreLayout::Kv(KvEngine::Fjall) => "kv-fjall",
            StoreLayout::Kv(KvEngine::Sled) => "kv-sled",
            // Only a marker: the pages are on the server.
            StoreLayout::Kv(KvEngine::Postgres) => "kv-postgres",
            StoreLayout::Files => "actors",
        }
    }
}

impl std::fmt::Display for StoreLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLayout::Kv(engine) => write!(f, "the kv backing with {engine}"),
            StoreLayout::Files => f.write_str("the files backing (one SQLite file per actor)"),
        }
    }
}

/// Tuning of each actor connection: start from [`ActorTuning::default`] and assign the
/// fields that differ (`#[non_exhaustive]`, so a setting can be added).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ActorTuning {
    /// Page-cache size per connection, in pages (`PRAGMA cache_size`).
    pub cache_pages: u32,
    /// `PRAGMA mmap_size`: with the kv backing, any value above 0 makes SQLite read pages
    /// through xFetch (the store's buffers, no copy) up to this offset.
    pub mmap_size: u64,
    /// Lookaside slots per connection (0 disables lookaside: it preallocates memory per
    /// connection that a mostly idle actor never uses).
    pub lookaside_slots: u32,
    /// Bytes per lookaside slot.
    pub lookaside_slot_size: u32,
    /// How long a connection waits for a lock before SQLITE_BUSY.
    pub busy_timeout: Duration,
}

impl Default for ActorTuning {
    fn default() -> ActorTuning {
        ActorTuning {
            cache_pages: 32,
            mmap_size: 1 << 30,
            lookaside_slots: 0,
            lookaside_slot_size: 0,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// How to open a store.
///
/// # The memory budget
///
/// [`Config::memory_budget`] is split into shares, each enforced where it is spent:
///
/// | share | of the budget | minimum | enforced by |
/// | --- | --- | --- | --- |
/// | kv caches ([`Config::kv_cache_bytes`]) | 1/4 | 4 MiB | half fjall's (or sled's) block cache, half the verified-chunk cache above it |
/// | kv write buffer ([`Config::kv_write_buffer_bytes`]) | 1/16 | 4 MiB | fjall's memtables: past it writers wait for a flush |
/// | SQLite's heap ([`Config::sqlite_heap_limit`]) | 1/2 | none | SQLite's soft heap limit: page caches shrink past it |
/// | awake connections ([`Config::max_awake`]) | 1/4, inside SQLite's half | 16 connections | the awake set: idle actors past the bound are put to sleep |
/// | temp files ([`Config::temp_limit`]) | 1/8 | none | the VFS: a temp file write past it fails with SQLITE_FULL |
/// | open transactions' pages ([`Config::overlay_limit`]) | 1/16 | 1 MiB | the VFS: past it a transaction's pages move to the kv's staging area |
///
/// The shares add up to the whole budget; what no share counts (the VFS's per-file
/// state, allocator overhead) comes on top. The minimums keep the key-value store
/// working (fjall flushes a memtable for every few writes below them), so a budget under
/// 64 MiB is exceeded: the kv always takes at least 8 MiB. With a 16 MiB budget the
/// shares come to 4 + 4 + 8 + 2 = 18 MiB.
///
/// What the budget does not cover, measured in `docs/BENCHMARKS.md` ("Memory after a
/// mass wake"): fjall's per-block bookkeeping of its cache and its in-memory segment
/// indexes, and heap that the allocator keeps after connections close.
///
/// # Building one
///
/// `Config` is `#[non_exhaustive]`, so that a setting can be added without breaking
/// callers: start from [`Config::default`] and change what differs with the `with_*`
/// setters (or assign the public fields).
///
/// ```
/// let config = shoal::Config::default()
///     .with_backing(shoal::Backing::Files)
///     .with_memory_budget(64 << 20)
///     .with_max_awake(Some(100));
/// assert_eq!(config.max_awake(), 100);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Where actor databases live.
    pub backing: Backing,
    /// The key-value store under [`Backing::Kv`].
    pub kv_engine: KvEngine,
    /// The process-wide memory budget in bytes, split as the table above says (a
    /// quarter for the kv's caches, a sixteenth for its write buffer, half as SQLite's
    /// soft heap limit with the awake connections inside it, an eighth for temp files,
    /// a sixteenth for the pages of open transactions).
    pub memory_budget: u64,
    /// Most actor connections kept awake; past it the least recently used idle actors
    /// are put to sleep (closed). `None` derives it from the budget (a quarter of it at
    /// 32 KiB each, at least 16); a larger bound lets awake actors outgrow the budget.
    pub max_awake: Option<usize>,
    /// Most actors waking (opening) at the same moment; more wait their turn.
    pub max_waking: usize,
    /// Durability of commits.
    pub durability: Durability,
    /// Per-connection tuning (not applied to [`Backing::Files`], which keeps SQLite's
    /// defaults on purpose).
    pub actor: ActorTuning,
    /// The PostgreSQL server of [`KvEngine::Postgres`]: a libpq-style URL
    /// (`postgresql://user@host/db`; a unix socket directory as the percent-encoded
    /// host; `?options=-csearch_path%3Dschema` picks the schema).
    pub postgres_url: Option<String>,
    /// How long a host's lease on an actor runs without renewal, on a store several hosts
    /// share (PostgreSQL): a host that dies has its actors taken over this long after its
    /// last renewal. Renewed every third of it.
    pub lease_duration: std::time::Duration,
    /// This host's id on a shared store (`None`: the host name, the process id and a
    /// random part). Must differ between the processes sharing the store.
    pub host_id: Option<String>,
    /// How long each actor's history is kept with the kv backing (`None`: history off):
    /// every commit stays restorable, and forkable, this long (docs/design.md,
    /// "History"). 7 days by default.
    pub history_keep: Option<std::time::Duration>,
    /// The most bytes of history one actor keeps; its oldest commits go first. 64 MiB by
    /// default.
    pub history_max_bytes: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            backing: Backing::default(),
            kv_engine: KvEngine::default(),
            memory_budget: 256 << 20,
            max_awake: None,
            max_waking: std::thread::available_parallelism().map_or(4, |n| n.get() * 2),
            durability: Durability::Full,
            actor: ActorTuning::default(),
            postgres_url: None,
            lease_duration: std::time::Duration::from_secs(10),
            host_id: None,
            history_keep: Some(std::time::Duration::from_secs(7 * 24 * 3600)),
            history_max_bytes: 64 << 20,
        }
    }
}

impl Config {
    /// Keeping each actor's history for `keep` (`None`: off) or `max_bytes`, whichever
    /// ends first.
    #[must_use]
    pub fn with_history(mut self, keep: Option<std::time::Duration>, max_bytes: u64) -> Config {
        self.history_keep = keep;
        self.history_max_bytes = max_bytes;
        self
    }

    /// With actors in `backing`.
    #[must_use]
    pub fn with_backing(mut self, backing: Backing) -> Config {
        self.backing = backing;
        self
    }

    /// With `kv_engine` under the kv backing.
    #[must_use]
    pub fn with_kv_engine(mut self, kv_engine: KvEngine) -> Config {
        self.kv_engine = kv_engine;
        self
    }

    /// With a memory budget of `bytes` (see the table above).
    #[must_use]
    pub fn with_memory_budget(mut self, bytes: u64) -> Config {
        self.memory_budget = bytes;
        self
    }

    /// With actors in the PostgreSQL server at `url` ([`KvEngine::Postgres`], under the kv
    /// backing).
    #[must_use]
    pub fn with_postgres(mut self, url: impl Into<String>) -> Config {
        self.kv_engine = KvEngine::Postgres;
        self.postgres_url = Some(url.into());
        self
    }

    /// With leases of `duration` on a shared store (see [`Config::lease_duration`]).
    #[must_use]
    pub fn with_lease_duration(mut self, duration: std::time::Duration) -> Config {
        self.lease_duration = duration;
        self
    }

    /// With `host` as this host's id on a shared store (see [`Config::host_id`]).
    #[must_use]
    pub fn with_host_id(mut self, host: impl Into<String>) -> Config {
        self.host_id = Some(host.into());
        self
    }

    /// With at most `max_awake` connections awake (`None`: derived from the budget).
    #[must_use]
    pub fn with_max_awake(mut self, max_awake: Option<usize>) -> Config {
        self.max_awake = max_awake;
        self
    }

    /// With at most `max_waking` actors waking at the same moment.
    #[must_use]
    pub fn with_max_waking(mut self, max_waking: usize) -> Config {
        self.max_waking = max_waking;
        self
    }

    /// With commits of `durability`.
    #[must_use]
    pub fn with_durability(mut self, durability: Durability) -> Config {
        self.durability = durability;
        self
    }

    /// With each actor connection tuned as `actor` says.
    #[must_use]
    pub fn with_actor_tuning(mut self, actor: ActorTuning) -> Config {
        self.actor = actor;
        self
    }

    /// Bytes of the budget given to the key-value store's caches: a quarter, at least
    /// 4 MiB.
    pub fn kv_cache_bytes(&self) -> u64 {
        (self.memory_budget / 4).max(4 << 20)
    }

    /// Bytes of the budget given to the key-value store's write buffer (memtables): a
    /// sixteenth, at least 4 MiB.
    pub fn kv_write_buffer_bytes(&self) -> u64 {
        (self.memory_budget / 16).max(4 << 20)
    }

    /// SQLite's soft heap limit: half the budget.
    pub fn sqlite_heap_limit(&self) -> u64 {
        self.memory_budget / 2
    }

    /// Bytes all temp files together may hold (temp tables, sorts larger than the page
    /// cache, VACUUM's copy of the database): an eighth of the budget. With the kv
    /// backing they live in memory, so a write past this fails with SQLITE_FULL, whose
    /// message through [`crate::Store::with_actor`] names the limit. (File backings
    /// keep SQLite's temp files on disk.)
    pub fn temp_limit(&self) -> u64 {
        self.memory_budget / 8
    }

    /// Bytes the pages of all open transactions may hold in memory: a sixteenth of the
    /// budget, at least 1 MiB. A transaction past it (with the kv backing) moves its
    /// pages to the kv's staging area as it goes and still commits as one atomic step;
    /// it writes those pages twice.
    pub fn overlay_limit(&self) -> u64 {
        (self.memory_budget / 16).max(1 << 20)
    }

    /// The awake-connection bound in force.
    pub fn max_awake(&self) -> usize {
        self.max_awake.unwrap_or_else(|| {
            usize::try_from(self.memory_budget / 4 / (32 << 10))
                .unwrap_or(usize::MAX)
                .max(16)
        })
    }
}
