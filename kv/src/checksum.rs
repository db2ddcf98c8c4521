//! The checksum trailer: the only place values are sealed and opened. Outside this crate
//! it is reached only through [`crate::raw`]; `kv/tests/golden/records.hex` pins a sealed
//! chunk.
//!
//! A sealed value is `payload ++ xxh3_64(payload, seed = xxh3_64(key))` (8 bytes, little
//! endian). Seeding with the key makes the checksum cover where the value is stored, so a
//! chunk copied under another database's key, or another chunk number, fails to open just
//! like a flipped bit does. Opening never copies: it verifies and slices the refcounted
//! buffer.

use bytes::Bytes;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::error::{Error, Result};
use crate::keys;

/// Bytes the trailer adds to every value.
pub const TRAILER_LEN: usize = 8;

fn checksum(key: &[u8], payload: &[u8]) -> [u8; TRAILER_LEN] {
    xxh3_64_with_seed(payload, xxh3_64(key)).to_le_bytes()
}

/// Seals `payload` for `key`, appending the trailer in place. Reserve
/// [`TRAILER_LEN`] spare capacity in `payload` to avoid a reallocation.
pub fn seal(key: &[u8], mut payload: Vec<u8>) -> Bytes {
    let sum = checksum(key, &payload);
    payload.extend_from_slice(&sum);
    Bytes::from(payload)
}

/// Seals a copy of `payload` for `key`.
pub fn seal_copy(key: &[u8], payload: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(payload.len() + TRAILER_LEN);
    v.extend_from_slice(payload);
    seal(key, v)
}

/// Verifies a value read under `key` and returns its payload, sharing the buffer.
pub fn open(key: &[u8], value: Bytes) -> Result<Bytes> {
    let Some(payload_len) = value.len().checked_sub(TRAILER_LEN) else {
        return Err(Error::Corrupt {
            what: keys::describe(key),
            reason: format!(
                "value of {} bytes is shorter than its checksum",
                value.len()
            ),
        });
    };
    let (payload, trailer) = value.split_at(payload_len);
    if checksum(key, payload) != trailer {
        return Err(Error::Checksum {
            what: keys::describe(key),
        });
    }
    Ok(value.slice(..payload_len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{ChunkNo, DbId, FileKind, chunk_key};

    #[test]
    fn seal_then_open_shares_the_buffer() {
        let key = chunk_key(DbId(1), FileKind::Main, ChunkNo(2));
        let sealed = seal_copy(&key, b"page bytes");
        let opened = open(&key, sealed.clone()).unwrap();
        assert_eq!(&opened[..], b"page bytes");
        assert_eq!(opened.as_ptr(), sealed.as_ptr(), "open must not copy");
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let key = chunk_key(DbId(1), FileKind::Main, ChunkNo(2));
        let sealed = seal_copy(&key, &[0x5a; 64]);
        for bit in 0..sealed.len() * 8 {
            let mut bad = sealed.to_vec();
            bad[bit / 8] ^= 1 << (bit % 8);
            let err = open(&key, Bytes::from(bad)).unwrap_err();
            assert!(matches!(err, Error::Checksum { .. }), "bit {bit}: {err}");
        }
    }

    #[test]
    fn a_value_under_another_key_is_detected() {
        let value = seal_copy(&chunk_key(DbId(1), FileKind::Main, ChunkNo(2)), b"x");
        for other in [
            chunk_key(DbId(2), FileKind::Main, ChunkNo(2)),
            chunk_key(DbId(1), FileKind::MainJournal, ChunkNo(2)),
            chunk_key(DbId(1), FileKind::Main, ChunkNo(3)),
        ] {
            assert!(matches!(
                open(&other, value.clone()),
                Err(Error::Checksum { .. })
            ));
        }
    }

    #[test]
    fn truncated_values_are_corrupt_not_panics() {
        let key = [1u8, 2, 3];
        let sealed = seal_copy(&key, b"abc");
        for len in 0..sealed.len() {
            assert!(open(&key, sealed.slice(..len)).is_err());
        }
    }
}
