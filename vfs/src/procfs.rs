//! Numbers from Linux's `/proc` status files (`/proc/self/status`, `/proc/meminfo`):
//! lines of the form `Name:   123 kB` or `Threads:   4`.

/// The process's status file.
pub const STATUS: &str = "/proc/self/status";

/// The numbers of `fields` (each given with its colon, `"VmRSS:"`) in one read of the
/// file at `path`, so they belong to the same moment; `None` for a field the file lacks,
/// and for all of them where the file does not exist (not Linux).
pub fn fields<const N: usize>(path: &str, fields: [&str; N]) -> [Option<u64>; N] {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    fields.map(|field| {
        let line = text.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    })
}

/// How many threads the process has now (`Threads:`), if the platform reports it.
pub fn thread_count() -> Option<u64> {
    let [threads] = fields(STATUS, ["Threads:"]);
    threads
}
