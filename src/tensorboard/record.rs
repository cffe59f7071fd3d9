//! TFRecord framing, the container of event files: each record is
//!
//! ```text
//! u64 length (little-endian) · u32 masked CRC-32C of those 8 bytes · data · u32 masked CRC-32C of data
//! ```
//!
//! CRC-32C is the Castagnoli polynomial (what SSE4.2's `crc32` instruction computes, not zlib's
//! CRC-32); "masked" rotates it and adds a constant, because a CRC of data that embeds CRCs is
//! weak (TensorFlow's `crc32c::Mask`).

/// The reflected Castagnoli polynomial.
const POLY: u32 = 0x82F6_3B78;

/// Byte-at-a-time lookup table, built at compile time.
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC-32C of `bytes`. Event records are a few hundred bytes, so a table is fast enough.
pub fn crc32c(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |crc, &b| {
        (crc >> 8) ^ TABLE[((crc ^ u32::from(b)) & 0xFF) as usize]
    })
}

/// TensorFlow's masked CRC-32C.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    let crc = crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xA282_EAD8)
}

/// Bytes of framing around a record's data: length, its CRC, and the data's CRC.
pub const OVERHEAD: usize = 8 + 4 + 4;

/// `data` framed as one record.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + OVERHEAD);
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// The records of a file's bytes, in order, up to the first one that is torn or damaged.
#[derive(Debug)]
pub struct Records<'a> {
    /// The data of each intact record.
    pub data: Vec<&'a [u8]>,
    /// Why reading stopped before the end, if it did.
    pub stopped: Option<Stop>,
}

/// Why the records of a file end before its bytes do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The file ends inside a record: a write cut short (a kill), nothing after it.
    Torn { offset: usize },
    /// A checksum does not match at `offset`.
    Damaged { offset: usize },
}

/// Splits `bytes` into records, checking both CRCs of each.
pub fn read(bytes: &[u8]) -> Records<'_> {
    let mut data = Vec::new();
    let mut at = 0;
    let stopped = loop {
        let rest = &bytes[at..];
        if rest.is_empty() {
            break None;
        }
        if rest.len() < 12 {
            break Some(Stop::Torn { offset: at });
        }
        let (len_bytes, crc_bytes) = (&rest[..8], &rest[8..12]);
        if masked_crc32c(len_bytes) != u32::from_le_bytes(crc_bytes.try_into().expect("4 bytes")) {
            break Some(Stop::Damaged { offset: at });
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        let Some(end) = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(OVERHEAD))
            .filter(|&end| end <= rest.len())
        else {
            break Some(Stop::Torn { offset: at });
        };
        let payload = &rest[12..end - 4];
        let want = u32::from_le_bytes(rest[end - 4..end].try_into().expect("4 bytes"));
        if masked_crc32c(payload) != want {
            break Some(Stop::Damaged { offset: at });
        }
        data.push(payload);
        at += end;
    };
    Records { data, stopped }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check value of CRC-32C (the CRC catalogue's "123456789") and RFC 3720's test
    /// vectors (iSCSI, B.4): 32 bytes of zeros, of 0xFF, and ascending 0..31.
    #[test]
    fn crc32c_matches_published_check_values() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn a_cut_or_flipped_record_stops_the_reading_where_it_starts() {
        let mut bytes = frame(b"first");
        let second = frame(b"second record");
        bytes.extend_from_slice(&second);
        let whole = read(&bytes);
        assert_eq!(whole.data, vec![&b"first"[..], &b"second record"[..]]);
        assert_eq!(whole.stopped, None);
        for cut in [bytes.len() - 1, bytes.len() - second.len() + 5] {
            let r = read(&bytes[..cut]);
            assert_eq!(r.data, vec![&b"first"[..]]);
            assert_eq!(r.stopped, Some(Stop::Torn { offset: 21 }));
        }
        let mut flipped = bytes.clone();
        flipped[21 + 12 + 3] ^= 1;
        assert_eq!(read(&flipped).stopped, Some(Stop::Damaged { offset: 21 }));
        let mut bad_len = bytes;
        bad_len[21 + 7] = 0x7F;
        assert_eq!(read(&bad_len).stopped, Some(Stop::Damaged { offset: 21 }));
    }
}
