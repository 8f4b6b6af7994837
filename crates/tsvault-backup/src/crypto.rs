//! Keys and sealing: a random master key wrapped by an Argon2id key from the passphrase; blob
//! ids are BLAKE3 keyed by a key derived from the master key; bodies are zstd-compressed, then
//! sealed with the repository's AEAD (AES-256-GCM, or ChaCha20-Poly1305 in repositories of
//! format 1) bound to the object's name. Both ciphers are `ring`'s.

use std::borrow::Cow;

use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Body format byte: zstd only (unencrypted repository; read, no longer written).
const BODY_PLAIN: u8 = 1;
/// Body format byte: zstd, then ChaCha20-Poly1305 with a 12-byte random nonce.
const BODY_SEALED: u8 = 2;
/// Body format byte: zstd, then a 32-byte keyed BLAKE3 checksum (unencrypted repository;
/// read, no longer written).
const BODY_PLAIN_CHECKED: u8 = 3;
/// Body format byte: zstd, then a 16-byte XXH3-128 checksum (unencrypted repository).
const BODY_PLAIN_XXH3: u8 = 5;
/// Body format byte: zstd, then AES-256-GCM with a 12-byte random nonce.
const BODY_SEALED_AES: u8 = 4;
const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;

/// The AEAD that seals an encrypted repository's objects (its config says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cipher {
    /// What repositories of format 2 on are written with: with AES-NI and carry-less
    /// multiplication several times faster than ChaCha20-Poly1305 (6.8 against 2.2 GB/s on
    /// one core of the benchmark machine, 4 MiB bodies).
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
    /// Repositories of format 1.
    #[serde(rename = "chacha20-poly1305")]
    ChaCha20Poly1305,
}

impl Cipher {
    fn body_format(self) -> u8 {
        match self {
            Cipher::Aes256Gcm => BODY_SEALED_AES,
            Cipher::ChaCha20Poly1305 => BODY_SEALED,
        }
    }

    fn key(self, key: &[u8; 32]) -> LessSafeKey {
        let algorithm = match self {
            Cipher::Aes256Gcm => &AES_256_GCM,
            Cipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
        };
        LessSafeKey::new(UnboundKey::new(algorithm, key).expect("a 32-byte key fits both"))
    }

    /// Every cipher, the default first.
    pub const ALL: [Cipher; 2] = [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305];

    /// How the config and the CLI spell it.
    pub fn id(self) -> &'static str {
        match self {
            Cipher::Aes256Gcm => "aes-256-gcm",
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }

    /// The cipher spelled `id`.
    pub fn from_id(id: &str) -> Option<Cipher> {
        Cipher::ALL.into_iter().find(|c| c.id() == id)
    }

    /// The cipher's usual name.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes256Gcm => "AES-256-GCM",
            Cipher::ChaCha20Poly1305 => "ChaCha20-Poly1305",
        }
    }
}

/// How hard a blob's plaintext is compressed (zstd; any level decodes the same way, so the
/// choice is the writer's alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Level 1: text (manifests), WAL records.
    Default,
    /// Level -3: per-series digests (keys sharing their prefix with the key before, and a
    /// hash each, incompressible). On 48 MB of a month of TSBS digests (`zstd -b1`,
    /// `zstd -b --fast=3`), level 1 made them 5.4 times smaller at about 980 MB/s on one
    /// core, level -3 4.8 times at about 1,890 MB/s: digests are a fifth of the bytes a
    /// full backup compresses, and at level 1 took a third of its compression time, for
    /// 0.5% of the backup's size.
    Digests,
    /// Level -10: a segment's bytes when asked for (`--compress-segments`), columns the
    /// engine has already compressed. On 42 MB of a month of TSBS segments (`zstd -b1`,
    /// `zstd -b --fast=10`), level 1 saves 6.9% at about 1,150 MB/s on one core, level -10
    /// saves 6.1% at about 2,550 MB/s; on a month of 500 hosts' integer samples, 10%.
    Fast,
    /// Not compressed: a zstd frame of raw blocks (see [`store_after`]). A segment's bytes
    /// by default: a full backup of 500 hosts x a month of integers (383 MB of segments,
    /// warm cache, medians of 8) took 0.62 core-seconds and 0.48 s stored, 0.89 and 0.61 s
    /// at level -10, for a backup 9.8% smaller.
    Stored,
}

impl Compression {
    /// The compression for the bytes of data-directory file `path`: a segment's bytes as
    /// they are unless `compress_segments`.
    pub fn for_file(path: &str, compress_segments: bool) -> Compression {
        match (tsvault_storage::is_segment_file(path), compress_segments) {
            (true, true) => Compression::Fast,
            (true, false) => Compression::Stored,
            (false, _) => Compression::Default,
        }
    }

    /// The zstd level, or None for a frame of raw blocks.
    fn zstd_level(self) -> Option<i32> {
        match self {
            Compression::Default => Some(1),
            Compression::Digests => Some(-3),
            Compression::Fast => Some(-10),
            Compression::Stored => None,
        }
    }
}

/// The bytes of a stored frame's header: magic, descriptor, window, content size.
const STORED_HEADER: usize = 4 + 1 + 1 + 8;

/// Appends the concatenation of `parts` as a zstd frame of raw (stored) blocks: what any
/// zstd decoder reads back at the speed of a copy, written without running the compressor
/// (RFC 8878: a frame header with a 128 KiB window and an 8-byte content size, then blocks
/// of 128 KiB but the last, each behind a 3-byte header of its size, type 0 and whether it
/// is the last). Raw blocks refer to nothing before them, so the window is the least a
/// 128 KiB block allows, whatever the size (a single-segment frame's window would be its
/// whole content, which decoders refuse past 128 MiB by default). The frame depends on the
/// bytes alone, not on how they are split into parts.
fn store_after(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.reserve_exact(stored_len(len) + 32);
    stored_frame(parts, |piece| {
        out.extend_from_slice(piece);
        Ok(())
    })
    .expect("appending to a Vec does not fail");
}

/// The length of the stored frame of `len` bytes.
fn stored_len(len: usize) -> usize {
    use zstd::zstd_safe::zstd_sys::ZSTD_BLOCKSIZE_MAX;
    STORED_HEADER + 3 * len.div_ceil(ZSTD_BLOCKSIZE_MAX as usize).max(1) + len
}

/// Hands the stored frame of the concatenation of `parts` (see [`store_after`]) to `emit`,
/// piece by piece: its header, then each block's header and bytes, as slices of `parts`.
fn stored_frame(
    parts: &[&[u8]],
    mut emit: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use zstd::zstd_safe::zstd_sys::{ZSTD_BLOCKSIZE_MAX, ZSTD_BLOCKSIZELOG_MAX, ZSTD_MAGICNUMBER};
    const BLOCK_MAX: usize = ZSTD_BLOCKSIZE_MAX as usize;
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut header = [0u8; STORED_HEADER];
    header[..4].copy_from_slice(&ZSTD_MAGICNUMBER.to_le_bytes());
    // Frame header descriptor: the content size in 8 bytes (0b11 << 6), not single-segment,
    // no checksum, no dictionary.
    header[4] = 0b1100_0000;
    // Window descriptor: 2^(10 + exponent) bytes, mantissa 0: one block.
    header[5] = ((ZSTD_BLOCKSIZELOG_MAX - 10) as u8) << 3;
    header[6..].copy_from_slice(&(len as u64).to_le_bytes());
    emit(&header)?;
    if len == 0 {
        return emit(&[1, 0, 0]);
    }
    let mut parts = parts.iter();
    let mut part: &[u8] = &[];
    let mut left = len;
    while left > 0 {
        let n = left.min(BLOCK_MAX);
        left -= n;
        let header = (n as u32) << 3 | u32::from(left == 0);
        emit(&header.to_le_bytes()[..3])?;
        let mut need = n;
        while need > 0 {
            if part.is_empty() {
                part = parts.next().expect("the parts hold `len` bytes");
                continue;
            }
            let take = need.min(part.len());
            emit(&part[..take])?;
            part = &part[take..];
            need -= take;
        }
    }
    Ok(())
}

/// Appends `plaintext` compressed at zstd `level` to `out` (a body's header so far): written
/// in place, where compressing into a buffer of its own cost a copy of every compressed byte
/// into the body, and fresh pages for that buffer. The frame records its content size (what
/// opening a body sizes its output by).
fn compress_after(
    out: &mut Vec<u8>,
    plaintext: &[u8],
    level: i32,
) -> std::result::Result<(), String> {
    use zstd::zstd_safe::{self, CCtx, CParameter, InBuffer, OutBuffer};
    let failed = |code| zstd_safe::get_error_name(code).to_string();
    // Room for the worst case and a trailer (a tag or a checksum): one call ends the frame.
    out.reserve_exact(zstd_safe::compress_bound(plaintext.len()) + 32);
    let mut cctx = CCtx::try_create().ok_or("zstd could not allocate a context")?;
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(failed)?;
    cctx.set_pledged_src_size(Some(plaintext.len() as u64))
        .map_err(failed)?;
    let start = out.len();
    let mut output = OutBuffer::around_pos(out, start);
    let mut input = InBuffer::around(plaintext);
    let left = cctx
        .compress_stream2(
            &mut output,
            &mut input,
            zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_end,
        )
        .map_err(failed)?;
    if left != 0 || input.pos() != plaintext.len() {
        return Err("the frame did not fit the room zstd said it needs".into());
    }
    Ok(())
}

/// How the master key is kept in the repository's `config`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyWrap {
    /// Argon2id parameters.
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
    pub salt: String,
    /// ChaCha20-Poly1305 of the master key under the passphrase key (whatever the cipher).
    pub nonce: String,
    pub wrapped: String,
    /// The cipher of the repository's objects; absent in repositories of format 1, which
    /// are ChaCha20-Poly1305.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher: Option<Cipher>,
}

/// The keys of an open repository.
pub struct Keys {
    id_key: [u8; 32],
    aead: Option<(Cipher, LessSafeKey)>,
}

impl Keys {
    /// A new random master key and its wrap under `password` (Argon2id: 64 MiB, 3 passes,
    /// 4 lanes); objects will be sealed with `cipher`.
    pub fn new_encrypted(password: &[u8], cipher: Cipher) -> Result<(Keys, KeyWrap)> {
        let mut master = [0u8; 32];
        rand::rng().fill_bytes(&mut master);
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        // RFC 9106's second recommended setting; the four lanes are computed in parallel.
        let (m, t, p) = (64 * 1024, 3, 4);
        let kek = derive_kek(password, &salt, m, t, p)?;
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let mut wrapped = master.to_vec();
        Cipher::ChaCha20Poly1305
            .key(&kek)
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut wrapped,
            )
            .map_err(|_| Error::Config("cannot wrap the master key".into()))?;
        let wrap = KeyWrap {
            m_cost_kib: m,
            t_cost: t,
            p_cost: p,
            salt: hex::encode(salt),
            nonce: hex::encode(nonce),
            wrapped: hex::encode(wrapped),
            cipher: Some(cipher),
        };
        Ok((Keys::from_master(&master, cipher), wrap))
    }

    /// Unwraps the master key with `password`; `repo` names the repository in errors.
    pub fn open_encrypted(wrap: &KeyWrap, password: &[u8], repo: &str) -> Result<Keys> {
        let bad = |what: &str| Error::Corrupt {
            what: format!("the config of repository {repo}"),
            detail: format!("{what} is not valid"),
        };
        let salt = hex::decode(&wrap.salt).map_err(|_| bad("the key salt"))?;
        let nonce: [u8; NONCE_BYTES] = hex::decode(&wrap.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| bad("the key nonce"))?;
        let mut wrapped = hex::decode(&wrap.wrapped).map_err(|_| bad("the wrapped key"))?;
        // The parameters come from the repository: bound them, so a damaged or hostile
        // config cannot make opening it take unbounded memory or time.
        if wrap.m_cost_kib > 4 << 20 || wrap.t_cost > 64 || wrap.p_cost > 64 {
            return Err(bad("the Argon2id cost (over 4 GiB, 64 passes or 64 lanes)"));
        }
        let kek = derive_kek(password, &salt, wrap.m_cost_kib, wrap.t_cost, wrap.p_cost)?;
        let master = Cipher::ChaCha20Poly1305
            .key(&kek)
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut wrapped,
            )
            .map_err(|_| Error::WrongPassword {
                repo: repo.to_string(),
            })?;
        let master: [u8; 32] = (&*master).try_into().map_err(|_| bad("the wrapped key"))?;
        let cipher = wrap.cipher.unwrap_or(Cipher::ChaCha20Poly1305);
        Ok(Keys::from_master(&master, cipher))
    }

    /// Keys of an unencrypted repository: ids keyed by the repository's stored id key.
    pub fn plain(id_key: [u8; 32]) -> Keys {
        Keys { id_key, aead: None }
    }

    fn from_master(master: &[u8; 32], cipher: Cipher) -> Keys {
        let id_key = blake3::derive_key("tsvault backup 2026-11 blob id", master);
        let aead_key = blake3::derive_key("tsvault backup 2026-11 blob sealing", master);
        Keys {
            id_key,
            aead: Some((cipher, cipher.key(&aead_key))),
        }
    }

    /// The content id of `plaintext`: keyed BLAKE3, hex.
    pub fn blob_id(&self, plaintext: &[u8]) -> String {
        self.blob_id_of_parts(&[plaintext])
    }

    /// The content id of the concatenation of `parts`.
    pub fn blob_id_of_parts(&self, parts: &[&[u8]]) -> String {
        let mut hasher = blake3::Hasher::new_keyed(&self.id_key);
        for part in parts {
            hasher.update(part);
        }
        hasher.finalize().to_hex().to_string()
    }

    /// Compresses and (in an encrypted repository) seals `plaintext`, bound to `name`.
    pub fn seal(&self, name: &str, plaintext: &[u8], compression: Compression) -> Result<Vec<u8>> {
        self.seal_parts(name, &[plaintext], compression)
    }

    /// [`Keys::seal`] of the concatenation of `parts`, which a stored body copies from
    /// where they are (a pack's files are not first copied into one buffer).
    pub fn seal_parts(
        &self,
        name: &str,
        parts: &[&[u8]],
        compression: Compression,
    ) -> Result<Vec<u8>> {
        let compress = |out: &mut Vec<u8>| match compression.zstd_level() {
            Some(level) => {
                let joined = match parts {
                    [one] => Cow::Borrowed(*one),
                    _ => Cow::Owned(parts.concat()),
                };
                compress_after(out, &joined, level)
                    .map_err(|e| Error::Config(format!("cannot compress {name}: {e}")))
            }
            None => {
                store_after(out, parts);
                Ok(())
            }
        };
        let Some((cipher, aead)) = &self.aead else {
            let mut out = Vec::new();
            out.push(BODY_PLAIN_XXH3);
            compress(&mut out)?;
            let check = plain_check(name, &out[1..]);
            out.extend_from_slice(&check);
            return Ok(out);
        };
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let mut out = Vec::new();
        out.push(cipher.body_format());
        out.extend_from_slice(&nonce);
        compress(&mut out)?;
        out.reserve_exact(TAG_BYTES);
        let tag = aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut out[1 + NONCE_BYTES..],
            )
            .map_err(|_| Error::Config(format!("cannot encrypt {name}")))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Whether objects are encrypted.
    pub fn encrypted(&self) -> bool {
        self.aead.is_some()
    }

    /// The body [`Keys::seal_parts`] makes of `parts` for `name` with
    /// [`Compression::Stored`] in an unencrypted repository, handed to `emit` piece by piece
    /// (slices of `parts` between a few bytes of framing) instead of built in a buffer: a
    /// local repository writes it to its file from where the bytes are. Its length is
    /// [`Keys::plain_stored_len`]. None in an encrypted repository (sealing needs the bytes
    /// in a buffer of its own).
    pub fn stream_plain_stored(
        &self,
        name: &str,
        parts: &[&[u8]],
        mut emit: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Option<std::io::Result<()>> {
        if self.encrypted() {
            return None;
        }
        let mut check = xxhash_rust::xxh3::Xxh3Default::new();
        check.update(name.as_bytes());
        check.update(&[0]);
        let streamed = emit(&[BODY_PLAIN_XXH3])
            .and_then(|()| {
                stored_frame(parts, |piece| {
                    check.update(piece);
                    emit(piece)
                })
            })
            .and_then(|()| emit(&check.digest128().to_be_bytes()));
        Some(streamed)
    }

    /// The length of the body [`Keys::stream_plain_stored`] hands over for `len` bytes.
    pub fn plain_stored_len(len: usize) -> u64 {
        (1 + stored_len(len) + 16) as u64
    }

    /// The checksum of an unencrypted body of format 3: BLAKE3 keyed with the blob-id key
    /// over the object's name, a zero byte and the compressed bytes.
    fn plain_check_blake3(&self, name: &str, compressed: &[u8]) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.id_key);
        h.update(name.as_bytes());
        h.update(&[0]);
        h.update(compressed);
        h.finalize()
    }

    /// The plaintext of a body [`Keys::seal`] made for `name`, at most `limit` bytes.
    pub fn open(&self, name: &str, body: &[u8], limit: usize) -> Result<Vec<u8>> {
        let corrupt = |detail: &str| Error::Corrupt {
            what: name.to_string(),
            detail: detail.to_string(),
        };
        let (&format, rest) = body.split_first().ok_or_else(|| corrupt("it is empty"))?;
        let compressed = match (format, &self.aead) {
            (BODY_PLAIN_XXH3 | BODY_PLAIN_CHECKED, None) => {
                let check_bytes = if format == BODY_PLAIN_XXH3 { 16 } else { 32 };
                let Some(split) = rest.len().checked_sub(check_bytes) else {
                    return Err(corrupt("it is truncated"));
                };
                let (compressed, check) = rest.split_at(split);
                let holds = if format == BODY_PLAIN_XXH3 {
                    plain_check(name, compressed) == check
                } else {
                    self.plain_check_blake3(name, compressed).as_bytes() == check
                };
                if !holds {
                    return Err(corrupt(
                        "it fails its checksum (changed, truncated or not this object)",
                    ));
                }
                Cow::Borrowed(compressed)
            }
            // Written before bodies carried a checksum: the blob id (blobs) and the JSON
            // (manifests) are all that check them.
            (BODY_PLAIN, None) => Cow::Borrowed(rest),
            (BODY_SEALED | BODY_SEALED_AES, Some((cipher, aead))) => {
                if format != cipher.body_format() {
                    return Err(corrupt(&format!(
                        "it is sealed with {}, not this repository's {}",
                        if format == BODY_SEALED_AES {
                            Cipher::Aes256Gcm
                        } else {
                            Cipher::ChaCha20Poly1305
                        }
                        .name(),
                        cipher.name()
                    )));
                }
                let (nonce, sealed) = rest
                    .split_first_chunk::<NONCE_BYTES>()
                    .ok_or_else(|| corrupt("it is truncated"))?;
                let mut sealed = sealed.to_vec();
                let opened = aead
                    .open_in_place(
                        Nonce::assume_unique_for_key(*nonce),
                        Aad::from(name.as_bytes()),
                        &mut sealed,
                    )
                    .map_err(|_| {
                        corrupt("it fails authentication (changed, truncated or not this object)")
                    })?
                    .len();
                sealed.truncate(opened);
                Cow::Owned(sealed)
            }
            (BODY_PLAIN | BODY_PLAIN_CHECKED | BODY_PLAIN_XXH3, Some(_)) => {
                return Err(corrupt("it is not encrypted in an encrypted repository"));
            }
            (BODY_SEALED | BODY_SEALED_AES, None) => {
                return Err(corrupt("it is encrypted in an unencrypted repository"));
            }
            (other, _) => return Err(corrupt(&format!("unknown body format {other}"))),
        };
        tsvault_storage::zstd_decompress(&compressed, limit)
            .map_err(|e| corrupt(&format!("it does not decompress: {e}")))
    }
}

/// The checksum of an unencrypted body (format 5): XXH3-128, big-endian, over the object's
/// name, a zero byte and the compressed bytes (what the AEAD tag does for an encrypted one,
/// against damage rather than forgery: whoever can write an unencrypted repository can
/// write its plaintext too). It replaced keyed BLAKE3 (format 3), a pass over every byte a
/// backup writes that was 5% of a large full backup's CPU; XXH3 costs about a fifth of it.
fn plain_check(name: &str, compressed: &[u8]) -> [u8; 16] {
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    h.update(name.as_bytes());
    h.update(&[0]);
    h.update(compressed);
    h.digest128().to_be_bytes()
}

fn derive_kek(password: &[u8], salt: &[u8], m: u32, t: u32, p: u32) -> Result<[u8; 32]> {
    let params = Params::new(m, t, p, Some(32))
        .map_err(|e| Error::Config(format!("Argon2id parameters: {e}")))?;
    let blocks = params.block_count();
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut kek = [0u8; 32];
    let hashed = match KdfMemory::map(blocks) {
        Some(mut memory) => {
            argon2.hash_password_into_with_memory(password, salt, &mut kek, memory.blocks())
        }
        None => argon2.hash_password_into(password, salt, &mut kek),
    };
    hashed.map_err(|e| Error::Config(format!("Argon2id: {e}")))?;
    Ok(kek)
}

/// Argon2id's memory (64 MiB by default), mapped for one derivation and asked of the kernel
/// in transparent huge pages: in 4 KiB pages its 16,384 page faults took about a third of
/// the derivation's CPU time (a key derived 25 ms sooner, 0.108 → 0.082 s, by `perf stat
/// -r 20` of a scratch program; 16,481 → 126 faults). Where huge pages are not to be had
/// the mapping is of small pages, as an allocation would be.
struct KdfMemory {
    ptr: std::ptr::NonNull<argon2::Block>,
    blocks: usize,
    /// The mapping's length in bytes.
    len: usize,
}

impl KdfMemory {
    /// A zero-filled anonymous mapping of `blocks` blocks; None when it cannot be made (the
    /// derivation then allocates its memory itself).
    #[cfg(target_os = "linux")]
    fn map(blocks: usize) -> Option<KdfMemory> {
        let len = blocks.checked_mul(argon2::Block::SIZE)?;
        // SAFETY: a new private anonymous mapping: no file, no memory of this process
        // touched; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: the range is the mapping just made; advice changes no contents. Refused
        // advice (a kernel without huge pages) leaves small pages, which serve as well.
        unsafe { libc::madvise(ptr, len, libc::MADV_HUGEPAGE) };
        Some(KdfMemory {
            ptr: std::ptr::NonNull::new(ptr.cast())?,
            blocks,
            len,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn map(_: usize) -> Option<KdfMemory> {
        None
    }

    fn blocks(&mut self) -> &mut [argon2::Block] {
        // SAFETY: the mapping holds `blocks` blocks, is page-aligned (more than a block's
        // 64 bytes), zero-filled (a valid block: zero words) and lives as long as `self`,
        // which this borrow holds exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.blocks) }
    }
}

#[cfg(target_os = "linux")]
impl Drop for KdfMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of this length, unmapped once; no borrow of it
        // outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cipher_opens_its_own_bodies_and_names_the_other() {
        let master = [9u8; 32];
        let aes = Keys::from_master(&master, Cipher::Aes256Gcm);
        let chacha = Keys::from_master(&master, Cipher::ChaCha20Poly1305);
        let plaintext = b"cpu_usage,host=a 1 2 3".repeat(100);
        for (keys, other, format) in [
            (&aes, &chacha, BODY_SEALED_AES),
            (&chacha, &aes, BODY_SEALED),
        ] {
            let body = keys
                .seal("blob x", &plaintext, Compression::Default)
                .unwrap();
            assert_eq!(body[0], format);
            assert_eq!(keys.open("blob x", &body, 1 << 20).unwrap(), plaintext);
            // Sealed twice, it differs (a fresh nonce each time).
            let again = keys
                .seal("blob x", &plaintext, Compression::Default)
                .unwrap();
            assert_ne!(again, body);
            let err = other
                .open("blob x", &body, 1 << 20)
                .unwrap_err()
                .to_string();
            assert!(err.contains("not this repository's"), "{err}");
            // Under another name, truncated, or any byte flipped: refused.
            let err = keys.open("blob y", &body, 1 << 20).unwrap_err().to_string();
            assert!(err.contains("fails authentication"), "{err}");
            for cut in [1, 1 + NONCE_BYTES - 1, 1 + NONCE_BYTES, body.len() - 1] {
                assert!(keys.open("blob x", &body[..cut], 1 << 20).is_err(), "{cut}");
            }
            for i in 1..body.len() {
                let mut flipped = body.clone();
                flipped[i] ^= 0x10;
                let err = keys.open("blob x", &flipped, 1 << 20).unwrap_err();
                assert!(err.to_string().contains("fails authentication"), "{i}");
            }
        }
    }

    /// An unencrypted body is written with its XXH3 check (format 5), and one with the
    /// keyed BLAKE3 check written before (format 3) still opens: for each, a flipped byte
    /// anywhere, a cut, or another name is refused as damage.
    #[test]
    fn unencrypted_bodies_of_either_check_open_and_show_damage() {
        let keys = Keys::plain([5; 32]);
        let plaintext = b"cpu_usage,host=a 1 2 3".repeat(100);
        let body = keys
            .seal("blob x", &plaintext, Compression::Default)
            .unwrap();
        assert_eq!(body[0], BODY_PLAIN_XXH3);
        let compressed = &body[1..body.len() - 16];
        let mut old = vec![BODY_PLAIN_CHECKED];
        old.extend_from_slice(compressed);
        old.extend_from_slice(keys.plain_check_blake3("blob x", compressed).as_bytes());
        for body in [body, old] {
            assert_eq!(keys.open("blob x", &body, 1 << 20).unwrap(), plaintext);
            let err = keys.open("blob y", &body, 1 << 20).unwrap_err().to_string();
            assert!(err.contains("fails its checksum"), "{err}");
            for cut in [1, 2, body.len() - 1] {
                assert!(keys.open("blob x", &body[..cut], 1 << 20).is_err(), "{cut}");
            }
            for i in 1..body.len() {
                let mut flipped = body.clone();
                flipped[i] ^= 0x10;
                let err = keys.open("blob x", &flipped, 1 << 20).unwrap_err();
                assert!(err.to_string().contains("fails its checksum"), "{i}: {err}");
            }
        }
    }

    /// Every kind of body, at each compression, of bytes empty, tiny, incompressible and
    /// compressible: opens to its plaintext, and its zstd frame (readable in an unencrypted
    /// body; every kind is compressed alike) records the plaintext's size (what opening
    /// sizes its output by).
    #[test]
    fn bodies_hold_one_whole_frame_that_records_its_size() {
        use rand::Rng;
        let master = [3u8; 32];
        let kinds = [
            (Keys::plain([5; 32]), 1),
            (
                Keys::from_master(&master, Cipher::Aes256Gcm),
                1 + NONCE_BYTES,
            ),
            (
                Keys::from_master(&master, Cipher::ChaCha20Poly1305),
                1 + NONCE_BYTES,
            ),
        ];
        let mut random = vec![0u8; 300_000];
        rand::rng().fill(&mut random[..]);
        let texts = [
            Vec::new(),
            b"x".to_vec(),
            random,
            b"cpu_usage,host=a 1 2 3\n".repeat(50_000),
        ];
        for (keys, header) in &kinds {
            for compression in [
                Compression::Default,
                Compression::Digests,
                Compression::Fast,
                Compression::Stored,
            ] {
                for text in &texts {
                    let body = keys.seal("blob z", text, compression).unwrap();
                    if body[0] == BODY_PLAIN_XXH3 {
                        assert_eq!(
                            zstd::zstd_safe::get_frame_content_size(&body[*header..]).ok(),
                            Some(Some(text.len() as u64)),
                            "{} bytes",
                            text.len()
                        );
                    }
                    let bound = zstd::zstd_safe::compress_bound(text.len());
                    assert!(body.len() <= header + bound + 32, "{}", body.len());
                    assert_eq!(&keys.open("blob z", &body, text.len()).unwrap(), text);
                }
            }
        }
    }

    /// A stored frame is what RFC 8878 says: libzstd reads it back, with no more window than
    /// 128 KiB; its size is the text's plus a 14-byte frame header and 3 bytes per block of
    /// at most 128 KiB, and it does not compress what zstd would.
    #[test]
    fn stored_frames_are_raw_blocks_libzstd_reads() {
        use rand::Rng;
        const BLOCK: usize = 128 << 10;
        let mut random = vec![0u8; 3 * BLOCK + 7];
        rand::rng().fill(&mut random[..]);
        for len in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, 3 * BLOCK + 7] {
            let text = &random[..len];
            let mut frame = b"before".to_vec();
            store_after(&mut frame, &[text]);
            let frame = &frame[6..];
            let blocks = len.div_ceil(BLOCK).max(1);
            assert_eq!(frame.len(), STORED_HEADER + 3 * blocks + len, "{len} bytes");
            let mut back = vec![0u8; len];
            let n = zstd::bulk::decompress_to_buffer(frame, &mut back).unwrap();
            assert_eq!((n, &back[..]), (len, text), "{len} bytes");
            // A streaming decoder held to the smallest window a 128 KiB block allows reads
            // it too.
            let mut small = zstd::stream::read::Decoder::with_buffer(frame).unwrap();
            small.window_log_max(17).unwrap();
            let mut back = Vec::new();
            std::io::Read::read_to_end(&mut small, &mut back).unwrap();
            assert_eq!(back, text, "{len} bytes");
            assert_eq!(
                zstd::zstd_safe::get_frame_content_size(frame).ok(),
                Some(Some(len as u64))
            );
            // The same bytes in parts (empty ones too, cuts inside and at block bounds)
            // make the same frame.
            for cuts in [
                vec![0, 0],
                vec![1],
                vec![BLOCK - 1, BLOCK + 2],
                vec![len / 3, len / 2],
            ] {
                let cuts: Vec<usize> = cuts.into_iter().filter(|c| *c <= len).collect();
                let mut parts = Vec::new();
                let mut at = 0;
                for c in cuts {
                    parts.push(&text[at..c.max(at)]);
                    at = c.max(at);
                }
                parts.push(&text[at..]);
                let mut split = b"before".to_vec();
                store_after(&mut split, &parts);
                assert_eq!(
                    &split[6..],
                    frame,
                    "{len} bytes cut {parts:?}",
                    parts = parts.len()
                );
            }
        }
        let text = b"cpu_usage,host=a 1 2 3\n".repeat(50_000);
        let keys = Keys::plain([5; 32]);
        let stored = keys.seal("blob s", &text, Compression::Stored).unwrap();
        let fast = keys.seal("blob s", &text, Compression::Fast).unwrap();
        assert!(stored.len() > text.len(), "{}", stored.len());
        assert!(fast.len() < text.len() / 4, "{}", fast.len());
        // A flipped byte of a stored block fails the body's check like any other.
        let mut bad = stored.clone();
        bad[100] ^= 1;
        assert!(keys.open("blob s", &bad, text.len()).is_err());
    }

    /// The body streamed piece by piece (as a local repository writes it) is the sealed one,
    /// byte for byte and of the announced length, however the bytes are split; it opens.
    /// An encrypted repository does not stream; a failing writer stops the stream.
    #[test]
    fn a_streamed_stored_body_is_the_sealed_one() {
        use rand::Rng;
        const BLOCK: usize = 128 << 10;
        let mut random = vec![0u8; 3 * BLOCK + 7];
        rand::rng().fill(&mut random[..]);
        let keys = Keys::plain([9; 32]);
        for len in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 7] {
            let text = &random[..len];
            let sealed = keys.seal("blob t", text, Compression::Stored).unwrap();
            assert_eq!(sealed.len() as u64, Keys::plain_stored_len(len), "{len}");
            for cut in [0, len / 3, len.saturating_sub(1), len] {
                let parts = [&text[..cut], &[][..], &text[cut..]];
                let mut streamed = Vec::new();
                keys.stream_plain_stored("blob t", &parts, |piece| {
                    streamed.extend_from_slice(piece);
                    Ok(())
                })
                .unwrap()
                .unwrap();
                assert!(streamed == sealed, "{len} bytes cut at {cut}");
            }
            assert_eq!(keys.open("blob t", &sealed, len).unwrap(), text);
        }
        let encrypted = Keys::from_master(&[3; 32], Cipher::ChaCha20Poly1305);
        assert!(
            encrypted
                .stream_plain_stored("blob t", &[b"x"], |_| Ok(()))
                .is_none()
        );
        let mut calls = 0;
        let err = keys
            .stream_plain_stored("blob t", &[&random[..]], |_| {
                calls += 1;
                Err(std::io::Error::other("disk full"))
            })
            .unwrap()
            .unwrap_err();
        assert_eq!((calls, err.to_string().as_str()), (1, "disk full"));
    }

    /// Segments' bytes are stored unless asked to compress them; other files compress.
    #[test]
    fn only_segments_may_be_stored() {
        let seg = "segments/00000000000000000001.seg";
        assert_eq!(Compression::for_file(seg, false), Compression::Stored);
        assert_eq!(Compression::for_file(seg, true), Compression::Fast);
        for other in ["MANIFEST", "wal/00000000000000000001.wal"] {
            for compress in [false, true] {
                assert_eq!(Compression::for_file(other, compress), Compression::Default);
            }
        }
    }

    /// The config (serde) and the CLI (`id`) spell each cipher the same way.
    #[test]
    fn a_cipher_is_spelled_one_way() {
        for c in Cipher::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), c.id());
            assert_eq!(Cipher::from_id(c.id()), Some(c));
        }
        assert_eq!(Cipher::from_id("rc4"), None);
    }

    /// The master key's wrap is ChaCha20-Poly1305 whatever the cipher; a wrong passphrase
    /// is reported as one.
    #[test]
    fn the_wrap_opens_with_the_passphrase_only() {
        for cipher in [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305] {
            let (keys, wrap) = Keys::new_encrypted(b"right", cipher).unwrap();
            assert_eq!(wrap.cipher, Some(cipher));
            let body = keys.seal("backup b", b"{}", Compression::Default).unwrap();
            let opened = Keys::open_encrypted(&wrap, b"right", "r").unwrap();
            assert_eq!(opened.open("backup b", &body, 1 << 20).unwrap(), b"{}");
            let err = Keys::open_encrypted(&wrap, b"wrong", "r").err().unwrap();
            assert!(matches!(err, Error::WrongPassword { .. }), "{err}");
        }
    }

    /// The passphrase key is Argon2id as the reference implementation computes it, with
    /// one lane (repositories made before lanes were computed in parallel) and several
    /// (computed in parallel now). The expected keys are from Debian's `argon2` 0~20171227
    /// (the reference C code): `echo -n "correct horse" | argon2 tsvault-kat-salt -id -t T -k
    /// M -p P -l 32 -r`; the `argon2` crate 0.5.3, which computed lanes one after another,
    /// gave the same.
    #[test]
    fn the_passphrase_key_is_the_reference_argon2id() {
        let cases = [
            (
                (65536, 3, 1),
                "49e37a81946e595a2463175d57f87836613831e924352d86c8efb3db5570afe1",
            ),
            (
                (65536, 3, 4),
                "bd22aa6f780fb09394d7415ebb5d21b3937e20399da2d82f8871ee085b2a8605",
            ),
            (
                (1024, 2, 4),
                "99bc40ed24895a5d15a53e30d58a2c7d1dafd687dc42c9b1131b303a6cbcb3e4",
            ),
            (
                (4096, 1, 3),
                "c0fa686af69c263b775ce3138b10ce1cd9999b277bbaab71680f638f3ffeb2f0",
            ),
        ];
        for ((m, t, p), want) in cases {
            let kek = derive_kek(b"correct horse", b"tsvault-kat-salt", m, t, p).unwrap();
            assert_eq!(hex::encode(kek), want, "m={m} KiB, t={t}, p={p}");
        }
    }
}
