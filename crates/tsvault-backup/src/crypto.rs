//! Keys and sealing: a random master key wrapped by an Argon2id key from the passphrase; blob
//! ids are BLAKE3 keyed by a key derived from the master key; bodies are zstd-compressed, then
//! sealed with ChaCha20-Poly1305 bound to the object's name.

use std::borrow::Cow;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Body format byte: zstd only (unencrypted repository; read, no longer written).
const BODY_PLAIN: u8 = 1;
/// Body format byte: zstd, then ChaCha20-Poly1305 with a 12-byte random nonce.
const BODY_SEALED: u8 = 2;
/// Body format byte: zstd, then a 32-byte keyed BLAKE3 checksum (unencrypted repository).
const BODY_PLAIN_CHECKED: u8 = 3;
const NONCE_BYTES: usize = 12;

/// How hard a blob's plaintext is compressed (zstd; any level decodes the same way, so the
/// choice is the writer's alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Level 1: text (manifests, digests), WAL records.
    Default,
    /// Level -10: a segment's bytes, columns the engine has already compressed. On 42 MB
    /// of a month of TSBS segments (`zstd -b1`, `zstd -b --fast=10`), level 1 saves 6.9% at
    /// about 1,150 MB/s on one core, level -10 saves 6.1% at about 2,550 MB/s.
    Fast,
}

impl Compression {
    /// The compression for the bytes of data-directory file `path`.
    pub fn for_file(path: &str) -> Compression {
        if tsvault_storage::is_segment_file(path) {
            Compression::Fast
        } else {
            Compression::Default
        }
    }

    fn zstd_level(self) -> i32 {
        match self {
            Compression::Default => 1,
            Compression::Fast => -10,
        }
    }
}

/// How the master key is kept in the repository's `config`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyWrap {
    /// Argon2id parameters.
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
    pub salt: String,
    /// ChaCha20-Poly1305 of the master key under the passphrase key.
    pub nonce: String,
    pub wrapped: String,
}

/// The keys of an open repository.
pub struct Keys {
    id_key: [u8; 32],
    aead: Option<ChaCha20Poly1305>,
}

impl Keys {
    /// A new random master key and its wrap under `password` (Argon2id: 64 MiB, 3 passes).
    pub fn new_encrypted(password: &[u8]) -> Result<(Keys, KeyWrap)> {
        let mut master = [0u8; 32];
        rand::rng().fill_bytes(&mut master);
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let (m, t, p) = (64 * 1024, 3, 1);
        let kek = derive_kek(password, &salt, m, t, p)?;
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let wrapped = ChaCha20Poly1305::new(Key::from_slice(&kek))
            .encrypt(Nonce::from_slice(&nonce), master.as_slice())
            .map_err(|_| Error::Config("cannot wrap the master key".into()))?;
        let wrap = KeyWrap {
            m_cost_kib: m,
            t_cost: t,
            p_cost: p,
            salt: hex::encode(salt),
            nonce: hex::encode(nonce),
            wrapped: hex::encode(wrapped),
        };
        Ok((Keys::from_master(&master, true), wrap))
    }

    /// Unwraps the master key with `password`; `repo` names the repository in errors.
    pub fn open_encrypted(wrap: &KeyWrap, password: &[u8], repo: &str) -> Result<Keys> {
        let bad = |what: &str| Error::Corrupt {
            what: format!("the config of repository {repo}"),
            detail: format!("{what} is not valid"),
        };
        let salt = hex::decode(&wrap.salt).map_err(|_| bad("the key salt"))?;
        let nonce = hex::decode(&wrap.nonce).map_err(|_| bad("the key nonce"))?;
        let wrapped = hex::decode(&wrap.wrapped).map_err(|_| bad("the wrapped key"))?;
        if nonce.len() != NONCE_BYTES {
            return Err(bad("the key nonce"));
        }
        // The parameters come from the repository: bound them, so a damaged or hostile
        // config cannot make opening it take unbounded memory or time.
        if wrap.m_cost_kib > 4 << 20 || wrap.t_cost > 64 || wrap.p_cost > 64 {
            return Err(bad("the Argon2id cost (over 4 GiB, 64 passes or 64 lanes)"));
        }
        let kek = derive_kek(password, &salt, wrap.m_cost_kib, wrap.t_cost, wrap.p_cost)?;
        let master = ChaCha20Poly1305::new(Key::from_slice(&kek))
            .decrypt(Nonce::from_slice(&nonce), wrapped.as_slice())
            .map_err(|_| Error::WrongPassword {
                repo: repo.to_string(),
            })?;
        let master: [u8; 32] = master.try_into().map_err(|_| bad("the wrapped key"))?;
        Ok(Keys::from_master(&master, true))
    }

    /// Keys of an unencrypted repository: ids keyed by the repository's stored id key.
    pub fn plain(id_key: [u8; 32]) -> Keys {
        Keys { id_key, aead: None }
    }

    fn from_master(master: &[u8; 32], encrypt: bool) -> Keys {
        let id_key = blake3::derive_key("tsvault backup 2026-11 blob id", master);
        let aead_key = blake3::derive_key("tsvault backup 2026-11 blob sealing", master);
        Keys {
            id_key,
            aead: encrypt.then(|| ChaCha20Poly1305::new(Key::from_slice(&aead_key))),
        }
    }

    /// The content id of `plaintext`: keyed BLAKE3, hex.
    pub fn blob_id(&self, plaintext: &[u8]) -> String {
        blake3::keyed_hash(&self.id_key, plaintext)
            .to_hex()
            .to_string()
    }

    /// Compresses and (in an encrypted repository) seals `plaintext`, bound to `name`.
    pub fn seal(&self, name: &str, plaintext: &[u8], compression: Compression) -> Result<Vec<u8>> {
        let compressed = zstd::bulk::compress(plaintext, compression.zstd_level())
            .map_err(|e| Error::Config(format!("cannot compress {name}: {e}")))?;
        let Some(aead) = &self.aead else {
            let mut out = Vec::with_capacity(compressed.len() + 1 + 32);
            out.push(BODY_PLAIN_CHECKED);
            out.extend_from_slice(&compressed);
            out.extend_from_slice(self.plain_check(name, &compressed).as_bytes());
            return Ok(out);
        };
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &compressed,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| Error::Config(format!("cannot encrypt {name}")))?;
        let mut out = Vec::with_capacity(1 + NONCE_BYTES + sealed.len());
        out.push(BODY_SEALED);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The checksum of an unencrypted body: BLAKE3 keyed with the blob-id key over the
    /// object's name, a zero byte and the compressed bytes (what the AEAD tag does for an
    /// encrypted one, against damage rather than forgery).
    fn plain_check(&self, name: &str, compressed: &[u8]) -> blake3::Hash {
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
            (BODY_PLAIN_CHECKED, None) => {
                let Some(split) = rest.len().checked_sub(32) else {
                    return Err(corrupt("it is truncated"));
                };
                let (compressed, check) = rest.split_at(split);
                if self.plain_check(name, compressed).as_bytes() != check {
                    return Err(corrupt(
                        "it fails its checksum (changed, truncated or not this object)",
                    ));
                }
                Cow::Borrowed(compressed)
            }
            // Written before bodies carried a checksum: the blob id (blobs) and the JSON
            // (manifests) are all that check them.
            (BODY_PLAIN, None) => Cow::Borrowed(rest),
            (BODY_SEALED, Some(aead)) => {
                if rest.len() < NONCE_BYTES {
                    return Err(corrupt("it is truncated"));
                }
                let (nonce, sealed) = rest.split_at(NONCE_BYTES);
                Cow::Owned(
                    aead.decrypt(
                        Nonce::from_slice(nonce),
                        Payload {
                            msg: sealed,
                            aad: name.as_bytes(),
                        },
                    )
                    .map_err(|_| {
                        corrupt("it fails authentication (changed, truncated or not this object)")
                    })?,
                )
            }
            (BODY_PLAIN | BODY_PLAIN_CHECKED, Some(_)) => {
                return Err(corrupt("it is not encrypted in an encrypted repository"));
            }
            (BODY_SEALED, None) => {
                return Err(corrupt("it is encrypted in an unencrypted repository"));
            }
            (other, _) => return Err(corrupt(&format!("unknown body format {other}"))),
        };
        tsvault_storage::zstd_decompress(&compressed, limit)
            .map_err(|e| corrupt(&format!("it does not decompress: {e}")))
    }
}

fn derive_kek(password: &[u8], salt: &[u8], m: u32, t: u32, p: u32) -> Result<[u8; 32]> {
    let params = Params::new(m, t, p, Some(32))
        .map_err(|e| Error::Config(format!("Argon2id parameters: {e}")))?;
    let mut kek = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password, salt, &mut kek)
        .map_err(|e| Error::Config(format!("Argon2id: {e}")))?;
    Ok(kek)
}
