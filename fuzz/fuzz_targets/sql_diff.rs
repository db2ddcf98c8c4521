//! A random SQL workload on shoal against stock SQLite (body: `shoal_testkit::sql::sql_diff`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_testkit::sql::sql_diff(data));
