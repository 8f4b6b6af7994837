//! The per-series digests of one file as a repository stores them (a digest blob, or a file's
//! slice of a pack's digests): binary, or JSON in backups written before the binary form.
//!
//! JSON cost about 250 bytes per series per file at TSBS's ten tags (the key whole, the hash
//! in hex, the field names), which at 500 hosts for a month was 150 MB of text beside 313 MB
//! of segments, to serialize, compress and write. The binary form (FORMAT.md, "Digests")
//! shares each key's prefix with the key before it and stores the hash as bytes.

use serde::Deserialize;
use tsvault_storage::bytes::{Reader, put_ivarint, put_uvarint};
use tsvault_storage::{DigestBasis, DigestHash, SeriesDigest};

const MAGIC: &[u8; 8] = b"TSVDIGB1";

/// The basis as its byte in the binary form, and the length of its hash in bytes.
fn basis_code(basis: DigestBasis) -> (u8, usize) {
    match basis {
        DigestBasis::Samples => (0, 32),
        DigestBasis::Blocks => (1, 32),
        DigestBasis::BlocksXxh3 => (2, 16),
        DigestBasis::BlocksCrc32c => (3, 4),
    }
}

fn basis_of(code: u8) -> Option<DigestBasis> {
    [
        DigestBasis::Samples,
        DigestBasis::Blocks,
        DigestBasis::BlocksXxh3,
        DigestBasis::BlocksCrc32c,
    ]
    .into_iter()
    .find(|b| basis_code(*b).0 == code)
}

/// The binary form of a file's digests on `basis`. A hash that is not of its basis's length
/// (digests a server sent) is an error naming the series.
pub(crate) fn encode(basis: DigestBasis, digests: &[SeriesDigest]) -> Result<Vec<u8>, String> {
    let mut e = Encoder::new(basis);
    for d in digests {
        e.push(
            &d.series,
            d.samples,
            d.min_ts_ms,
            d.max_ts_ms,
            d.hash.as_bytes(),
        )?;
    }
    Ok(e.finish())
}

/// Writes the binary form one digest at a time, from keys that need not outlive the call
/// (a segment's index entries as they are walked).
pub(crate) struct Encoder {
    basis: DigestBasis,
    count: u64,
    /// The digests after the count.
    body: Vec<u8>,
    /// The key of the digest before.
    previous: Vec<u8>,
}

impl Encoder {
    pub(crate) fn new(basis: DigestBasis) -> Encoder {
        Encoder {
            basis,
            count: 0,
            body: Vec::new(),
            previous: Vec::new(),
        }
    }

    /// Appends the digest of `series`; a hash not of the basis's length is an error.
    pub(crate) fn push(
        &mut self,
        series: &str,
        samples: u64,
        min_ts_ms: i64,
        max_ts_ms: i64,
        hash: &[u8],
    ) -> Result<(), String> {
        let (_, hash_len) = basis_code(self.basis);
        if hash.len() != hash_len {
            return Err(format!(
                "series {series}: hash {} is {} bytes, not the {hash_len} of a {} digest",
                hex::encode(hash),
                hash.len(),
                self.basis.as_str()
            ));
        }
        let key = series.as_bytes();
        let shared = key
            .iter()
            .zip(&self.previous)
            .take_while(|(a, b)| a == b)
            .count();
        let out = &mut self.body;
        put_uvarint(out, shared as u64);
        put_uvarint(out, (key.len() - shared) as u64);
        out.extend_from_slice(&key[shared..]);
        put_uvarint(out, samples);
        put_ivarint(out, min_ts_ms);
        put_ivarint(out, max_ts_ms.wrapping_sub(min_ts_ms));
        out.extend_from_slice(hash);
        self.previous.truncate(shared);
        self.previous.extend_from_slice(&key[shared..]);
        self.count += 1;
        Ok(())
    }

    /// The binary form of the digests pushed.
    pub(crate) fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAGIC.len() + 1 + 10 + self.body.len());
        out.extend_from_slice(MAGIC);
        out.push(basis_code(self.basis).0);
        put_uvarint(&mut out, self.count);
        out.extend_from_slice(&self.body);
        out
    }
}

/// A digest blob in JSON: `{"basis": "...", "series": [...]}`, or a bare list (written
/// before digests had a basis: on samples).
#[derive(Deserialize)]
#[serde(untagged)]
enum JsonBlob {
    Tagged {
        basis: DigestBasis,
        series: Vec<SeriesDigest>,
    },
    Bare(Vec<SeriesDigest>),
}

/// The digests `bytes` hold, and their basis, from either form. Damage is an error saying
/// where, never a panic; nothing is allocated beyond what the bytes can hold.
pub(crate) fn decode(bytes: &[u8]) -> Result<(DigestBasis, Vec<SeriesDigest>), String> {
    let Some(body) = bytes.strip_prefix(MAGIC) else {
        return match serde_json::from_slice(bytes) {
            Ok(JsonBlob::Tagged { basis, series }) => Ok((basis, series)),
            Ok(JsonBlob::Bare(series)) => Ok((DigestBasis::Samples, series)),
            Err(e) => Err(e.to_string()),
        };
    };
    let mut r = Reader::new(body);
    let code = r.u8().ok_or("it ends before its basis")?;
    let basis = basis_of(code).ok_or_else(|| format!("unknown basis {code}"))?;
    let (_, hash_len) = basis_code(basis);
    let count = r.uvarint().ok_or("it ends before its count")?;
    // Each digest takes at least 5 bytes besides its hash.
    if count > (body.len() / (5 + hash_len)) as u64 {
        return Err(format!(
            "{count} digests cannot fit in {} bytes",
            bytes.len()
        ));
    }
    let mut out: Vec<SeriesDigest> = Vec::with_capacity(count as usize);
    let mut key: Vec<u8> = Vec::new();
    for i in 0..count {
        let at = |what: &str| format!("digest {i}: {what}");
        let shared = r.uvarint().ok_or_else(|| at("truncated"))?;
        if shared > key.len() as u64 {
            return Err(at("shares more of the key before it than there is"));
        }
        key.truncate(shared as usize);
        let suffix_len = r.uvarint().ok_or_else(|| at("truncated"))?;
        let suffix = usize::try_from(suffix_len)
            .ok()
            .and_then(|n| r.bytes(n))
            .ok_or_else(|| at("truncated"))?;
        key.extend_from_slice(suffix);
        let series = std::str::from_utf8(&key)
            .map_err(|_| at("its series key is not UTF-8"))?
            .to_string();
        let samples = r.uvarint().ok_or_else(|| at("truncated"))?;
        let min_ts_ms = r.ivarint().ok_or_else(|| at("truncated"))?;
        let span = r.ivarint().ok_or_else(|| at("truncated"))?;
        let hash = r.bytes(hash_len).ok_or_else(|| at("truncated"))?;
        out.push(SeriesDigest {
            series,
            samples,
            min_ts_ms,
            max_ts_ms: min_ts_ms.wrapping_add(span),
            hash: DigestHash::from_bytes(hash).expect("4, 16 or 32 bytes, by the basis"),
        });
    }
    if !r.is_empty() {
        return Err(format!(
            "{} bytes follow its {count} digests",
            r.rest().len()
        ));
    }
    Ok((basis, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    /// The JSON form, as written before the binary one.
    #[derive(Serialize)]
    struct JsonBlobOut<'a> {
        basis: DigestBasis,
        series: &'a [SeriesDigest],
    }

    /// A digest whose hash is the bytes that hex `hash` spells.
    fn d(series: &str, samples: u64, min: i64, max: i64, hash: String) -> SeriesDigest {
        SeriesDigest {
            series: series.into(),
            samples,
            min_ts_ms: min,
            max_ts_ms: max,
            hash: DigestHash::from_bytes(&hex::decode(hash).unwrap()).unwrap(),
        }
    }

    #[test]
    fn binary_digests_round_trip_and_json_is_still_read() {
        let digests = vec![
            d("cpu{host=a}", 3, -5, 1_700_000_000_000, "0f".repeat(16)),
            d("cpu{host=ab}", 1, i64::MIN, i64::MAX, "a1".repeat(16)),
            d("cpu{host=ab}é", 0, 0, 0, "00".repeat(16)),
            d("mem{host=a}", u64::MAX, 7, 7, "ff".repeat(16)),
        ];
        let bytes = encode(DigestBasis::BlocksXxh3, &digests).unwrap();
        assert_eq!(
            decode(&bytes).unwrap(),
            (DigestBasis::BlocksXxh3, digests.clone())
        );
        // Each basis with a hash of its length.
        for (basis, hex_len) in [
            (DigestBasis::BlocksCrc32c, 8),
            (DigestBasis::Blocks, 64),
            (DigestBasis::Samples, 64),
        ] {
            let of_len: Vec<SeriesDigest> = digests
                .iter()
                .map(|x| {
                    let hash = x.hash.to_string().repeat(2)[..hex_len].to_string();
                    d(&x.series, x.samples, x.min_ts_ms, x.max_ts_ms, hash)
                })
                .collect();
            let bytes = encode(basis, &of_len).unwrap();
            assert_eq!(decode(&bytes).unwrap(), (basis, of_len));
        }
        // Shared prefixes are stored once.
        let whole: usize = digests.iter().map(|d| d.series.len()).sum();
        assert!(
            bytes.len() < MAGIC.len() + 2 + whole + 4 * (16 + 4) + 20,
            "{}",
            bytes.len()
        );
        let empty = encode(DigestBasis::Samples, &[]).unwrap();
        assert_eq!(decode(&empty).unwrap(), (DigestBasis::Samples, vec![]));

        let json = serde_json::to_vec(&JsonBlobOut {
            basis: DigestBasis::Blocks,
            series: &digests,
        })
        .unwrap();
        assert_eq!(
            decode(&json).unwrap(),
            (DigestBasis::Blocks, digests.clone())
        );
        let bare = serde_json::to_vec(&digests).unwrap();
        assert_eq!(decode(&bare).unwrap(), (DigestBasis::Samples, digests));
        for bad in [
            &b"{\"basis\":\"bytes\",\"series\":[]}"[..],
            b"{}",
            b"7",
            b"",
        ] {
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn hashes_that_are_not_hex_of_the_basis_length_are_refused() {
        // A hash of the other basis's length is not stored.
        for (basis, hash) in [
            (DigestBasis::BlocksXxh3, "ab".repeat(32)),
            (DigestBasis::Samples, "ab".repeat(16)),
            (DigestBasis::Blocks, "ab".repeat(16)),
            (DigestBasis::BlocksCrc32c, "ab".repeat(16)),
            (DigestBasis::BlocksXxh3, "ab".repeat(4)),
        ] {
            let err = encode(basis, &[d("cpu{host=a}", 1, 0, 0, hash)]).unwrap_err();
            assert!(err.starts_with("series cpu{host=a}: hash abab"), "{err}");
            assert!(err.contains(basis.as_str()), "{err}");
        }
        // Nor is one that is not hex of either length read (digests a server sent as JSON).
        let good = serde_json::to_value(d("m", 1, 0, 0, "ab".repeat(16))).unwrap();
        assert_eq!(good["blake3"], "ab".repeat(16));
        assert!(serde_json::from_value::<SeriesDigest>(good.clone()).is_ok());
        for hash in [
            "zz".repeat(32),
            "ab".repeat(31) + "a",
            "ab".repeat(20),
            "ab".repeat(3),
            "ab".repeat(33),
            String::new(),
        ] {
            let mut json = good.clone();
            json["blake3"] = hash.clone().into();
            let err = serde_json::from_value::<SeriesDigest>(json)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("hash {hash:?} is not 8, 32 or 64 hex digits")),
                "{err}"
            );
        }
    }

    #[test]
    fn damaged_binary_digests_are_errors_never_panics() {
        let digests = vec![
            d("cpu{host=a}", 3, 1, 2, "0f".repeat(16)),
            d("cpu{host=b}", 4, 1, 2, "f0".repeat(16)),
        ];
        let bytes = encode(DigestBasis::BlocksXxh3, &digests).unwrap();
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "truncated to {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer).unwrap_err(), "1 bytes follow its 2 digests");
        let mut basis = bytes.clone();
        basis[8] = 9;
        assert_eq!(decode(&basis).unwrap_err(), "unknown basis 9");
        let mut count = bytes.clone();
        count[9] = 0x7f;
        assert!(decode(&count).unwrap_err().contains("cannot fit"));
        // The second digest claims to share more than the first key's length.
        let mut shared = bytes.clone();
        let second = MAGIC.len() + 2 + 2 + "cpu{host=a}".len() + 3 + 16;
        assert_eq!(shared[second], "cpu{host=".len() as u8);
        shared[second] = 100;
        assert_eq!(
            decode(&shared).unwrap_err(),
            "digest 1: shares more of the key before it than there is"
        );
        let mut utf8 = bytes.clone();
        utf8[MAGIC.len() + 4] = 0xff;
        assert_eq!(
            decode(&utf8).unwrap_err(),
            "digest 0: its series key is not UTF-8"
        );
        // Any one flipped bit is an error or other digests (the hash's check is the blob's).
        for (i, b) in bytes.iter().enumerate() {
            for flip in [1u8, 0x80] {
                let mut damaged = bytes.clone();
                damaged[i] = b ^ flip;
                assert_ne!(
                    decode(&damaged),
                    Ok((DigestBasis::BlocksXxh3, digests.clone())),
                    "bit {flip:#x} of byte {i}"
                );
            }
        }
    }
}
