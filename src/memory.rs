//! What the process's memory looks like: RSS as the kernel counts it (allocator and
//! backend memory included), and the parts shoal can name.

use shoal_vfs::procfs::STATUS;

/// Resident set size of this process in KiB (`VmRSS`), if the platform reports it.
pub fn rss_kb() -> Option<u64> {
    kb_field(STATUS, "VmRSS:")
}

/// Anonymous resident memory in KiB (`RssAnon`: heap, stacks), if reported.
pub fn rss_anon_kb() -> Option<u64> {
    kb_field(STATUS, "RssAnon:")
}

/// File-backed resident memory in KiB (`RssFile`: mapped files such as mmap'ed
/// databases, and the executable), if reported.
pub fn rss_file_kb() -> Option<u64> {
    kb_field(STATUS, "RssFile:")
}

/// Peak resident set size of this process in KiB (`VmHWM`).
pub fn peak_rss_kb() -> Option<u64> {
    kb_field(STATUS, "VmHWM:")
}

/// The machine's memory in KiB (`MemTotal`), if reported.
pub fn total_memory_kb() -> Option<u64> {
    kb_field("/proc/meminfo", "MemTotal:")
}

/// RSS, its anonymous part and its file-backed part, from one read of the status file
/// (so the three belong to the same moment).
pub(crate) fn rss_parts_kb() -> [Option<u64>; 3] {
    kb_fields(STATUS, ["VmRSS:", "RssAnon:", "RssFile:"])
}

/// Bytes this process has caused to be written to storage so far (`write_bytes` of
/// `/proc/self/io`: all its threads, counted when a page is dirtied, so data written and
/// not yet written back by the kernel is included), if the platform reports it.
pub fn io_write_bytes() -> Option<u64> {
    let [bytes] = shoal_vfs::procfs::fields("/proc/self/io", ["write_bytes:"]);
    bytes
}

fn kb_field(path: &str, field: &str) -> Option<u64> {
    let [value] = kb_fields(path, [field]);
    value
}

/// The values of `fields` (lines `Name:   123 kB`) in one read of the file at `path`.
fn kb_fields<const N: usize>(path: &str, fields: [&str; N]) -> [Option<u64>; N] {
    shoal_vfs::procfs::fields(path, fields)
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
