//! Raw `KvStore` and `Kv` layer operations on `FjallKv` against `MemKv`
//! (body: `shoal_kv::fuzzing::kv_ops`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_kv::fuzzing::kv_ops(data));
