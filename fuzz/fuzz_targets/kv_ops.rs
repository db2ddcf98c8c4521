//! Raw `KvStore` and `Kv` layer operations on `FjallKv` against `MemKv`
//! (body: `shoal_testkit::kv_ops::kv_ops`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_testkit::kv_ops::kv_ops(data));
