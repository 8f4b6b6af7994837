//! Little-endian and varint encoding helpers shared by the on-disk formats.

/// Appends `v` as an unsigned LEB128 varint.
pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `v` zigzag-encoded as a varint.
pub fn put_ivarint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// A bounds-checked reader over a byte slice; every read fails cleanly on short input.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn uvarint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    pub fn ivarint(&mut self) -> Option<i64> {
        let u = self.uvarint()?;
        Some(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    /// Everything not yet read.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos.min(self.buf.len())..];
        self.pos = self.buf.len();
        s
    }

    pub fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }

    pub fn i64(&mut self) -> Option<i64> {
        Some(self.u64()? as i64)
    }

    pub fn f64(&mut self) -> Option<f64> {
        Some(f64::from_bits(self.u64()?))
    }
}

/// Decompresses the zstd frame `bytes` into at most `limit` bytes. The buffer is sized by
/// the frame's declared content size, not by `limit`: a buffer of the limit (up to 1 GiB)
/// for every segment index or blob cost a mapping and its teardown each time. A declared
/// size past the limit, or content that does not match it, is an error. Each thread keeps
/// one decompression context (making one for every segment index a backup reads was 1% of
/// its CPU).
pub fn zstd_decompress(bytes: &[u8], limit: usize) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static CONTEXT: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let capacity = match zstd::zstd_safe::get_frame_content_size(bytes) {
        Ok(Some(n)) if n > limit as u64 => {
            return Err(std::io::Error::other(format!(
                "its frame declares {n} bytes, more than the {limit} allowed"
            )));
        }
        Ok(Some(n)) => n as usize,
        // Not declared: decoding stops at the limit.
        Ok(None) => limit,
        Err(_) => return Err(std::io::Error::other("not a zstd frame")),
    };
    CONTEXT.with_borrow_mut(|context| {
        let context = match context {
            Some(c) => c,
            None => context.insert(zstd::bulk::Decompressor::new()?),
        };
        context.decompress(bytes, capacity)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        let vals = [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            i64::MAX,
            i64::MIN,
            1_700_000_000_000,
        ];
        let mut out = Vec::new();
        for v in vals {
            put_ivarint(&mut out, v);
            put_uvarint(&mut out, v as u64);
        }
        let mut r = Reader::new(&out);
        for v in vals {
            assert_eq!(r.ivarint(), Some(v));
            assert_eq!(r.uvarint(), Some(v as u64));
        }
        assert!(r.is_empty());
        assert_eq!(Reader::new(&[0x80, 0x80]).uvarint(), None);
    }

    #[test]
    fn zstd_frames_decompress_within_their_declared_size_and_the_limit() {
        for plain in [Vec::new(), b"abc".repeat(1000)] {
            let frame = zstd::bulk::compress(&plain, 1).unwrap();
            assert_eq!(zstd_decompress(&frame, 1 << 20).unwrap(), plain);
            // No declared size (a streamed frame): the limit bounds it.
            let streamed = zstd::encode_all(&plain[..], 1).unwrap();
            assert_eq!(zstd_decompress(&streamed, 1 << 20).unwrap(), plain);
            if !plain.is_empty() {
                assert!(zstd_decompress(&streamed, 10).is_err());
            }
        }
        let plain = b"abc".repeat(1000);
        let frame = zstd::bulk::compress(&plain, 1).unwrap();
        let err = zstd_decompress(&frame, 100).unwrap_err();
        assert!(err.to_string().contains("declares 3000 bytes"), "{err}");
        assert!(zstd_decompress(b"not zstd at all", 1 << 20).is_err());
        // A frame that declares less than it holds (a 2-byte content size field stores the
        // size less 256).
        let mut header_says_less = frame.clone();
        let declared = header_says_less[..8]
            .windows(2)
            .position(|w| w == (3000u16 - 256).to_le_bytes())
            .expect("a 2-byte content size in the header");
        header_says_less[declared..declared + 2].copy_from_slice(&(2000u16 - 256).to_le_bytes());
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&header_says_less).ok(),
            Some(Some(2000))
        );
        assert!(zstd_decompress(&header_says_less, 1 << 20).is_err());
        // The thread's context, used by every call above, errors included, still decodes.
        let mut damaged = frame.clone();
        let mid = damaged.len() / 2;
        damaged[mid] ^= 0xff;
        assert_ne!(zstd_decompress(&damaged, 1 << 20).ok(), Some(plain.clone()));
        assert_eq!(zstd_decompress(&frame, 1 << 20).unwrap(), plain);
    }
}
