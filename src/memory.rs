//! What the process's memory looks like: RSS as the kernel counts it (allocator and
//! backend memory included), and the parts shoal can name.

/// Resident set size of this process in KiB (`VmRSS`), if the platform reports it.
pub fn rss_kb() -> Option<u64> {
    status_field("VmRSS:")
}

/// Anonymous resident memory in KiB (`RssAnon`: heap, stacks), if reported.
pub fn rss_anon_kb() -> Option<u64> {
    status_field("RssAnon:")
}

/// File-backed resident memory in KiB (`RssFile`: mapped files such as mmap'ed
/// databases, and the executable), if reported.
pub fn rss_file_kb() -> Option<u64> {
    status_field("RssFile:")
}

/// Peak resident set size of this process in KiB (`VmHWM`).
pub fn peak_rss_kb() -> Option<u64> {
    status_field("VmHWM:")
}

fn status_field(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A snapshot of the store's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReport {
    /// Actor connections open now (idle and in use).
    pub awake: usize,
    /// Bytes SQLite has allocated, process-wide.
    pub sqlite_heap: i64,
    /// The kv cache's capacity in bytes (0 for file backings).
    pub kv_cache_capacity: u64,
    /// Process RSS in KiB (0 if unknown).
    pub rss_kb: u64,
    /// The anonymous part of it (heap).
    pub rss_anon_kb: u64,
    /// The file-backed part of it (mapped files).
    pub rss_file_kb: u64,
}
