//! Read, write, truncate, sync, batch and lock sequences on one stored file against a byte
//! vector (body: `shoal_vfs::fuzzing::vfs_file`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_vfs::fuzzing::vfs_file(data));
