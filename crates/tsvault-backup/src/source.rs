//! Where a backup reads its files: a stopped data directory, or a running server's snapshot
//! pulled over HTTP through the server's admin API (so the repository's credentials stay
//! with the CLI) or, on the server's machine, read from the snapshot's directory; and the
//! client for that API.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use tsvault_storage::{DigestBasis, ImportOutcome, SNAPSHOTS_DIR, SeriesDigest, SnapshotInfo};

use crate::error::{Error, Result, off_thread};
use crate::locks::now_ms;
use crate::manifest::ConsistencyPoint;
use crate::selective::engine_err;

/// One file a source offers.
pub(crate) struct SourceFile {
    pub path: String,
    pub size: u64,
    /// Modification time (data directories): with the size, how an unchanged file is known.
    pub mtime_ns: i128,
    /// BLAKE3 of the whole file when the source knows it (snapshots): how an unchanged file
    /// is known, and what its bytes are checked against.
    pub blake3: Option<String>,
}

/// A running server's admin API.
#[derive(Clone)]
pub struct ServerClient {
    client: reqwest::Client,
    /// `http://host:port`, without a trailing slash.
    pub base: String,
}

impl ServerClient {
    /// A client for the server at `url` (`http://` or `https://`).
    pub fn new(url: &str) -> Result<Self> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Config(format!(
                "--server {url:?}: give the server's URL, such as http://127.0.0.1:4242"
            )));
        }
        // A plain-HTTP server needs no certificate roots, and loading the system's takes
        // longer than a small incremental backup.
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(base.starts_with("https://"))
            .build()
            .map_err(|e| Error::Config(format!("cannot build an HTTP client: {e}")))?;
        Ok(ServerClient { client, base })
    }

    fn err(&self, what: &str, detail: impl std::fmt::Display) -> Error {
        Error::Server {
            url: self.base.clone(),
            detail: format!("{what}: {detail}"),
        }
    }

    /// Sends `req`; a non-success status is an error carrying the server's message.
    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| self.err(what, e))?;
        self.check(what, resp).await
    }

    /// `resp` if its status is a success, else an error carrying the server's message.
    async fn check(&self, what: &str, resp: reqwest::Response) -> Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let msg = error_message(resp).await;
        Err(self.err(what, format!("{status}: {msg}")))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        what: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<T> {
        let resp = self.send(what, req).await?;
        self.body_json(what, resp).await
    }

    async fn body_json<T: DeserializeOwned>(
        &self,
        what: &str,
        resp: reqwest::Response,
    ) -> Result<T> {
        let bytes = resp.bytes().await.map_err(|e| self.err(what, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| self.err(what, format!("unexpected answer: {e}")))
    }

    /// Takes a snapshot (`POST /api/admin/snapshots`).
    pub async fn take_snapshot(&self) -> Result<SnapshotInfo> {
        let url = format!("{}/api/admin/snapshots", self.base);
        let info: SnapshotInfo = self
            .json("taking a snapshot", self.client.post(url))
            .await?;
        // The answer names what goes into the manifest and into later URLs: checked as a
        // restore would check it, so a bad answer fails the backup, not a later restore.
        if !tsvault_storage::is_snapshot_id(&info.id) {
            return Err(self.err(
                "taking a snapshot",
                format!("{:?} is not a snapshot id", info.id),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &info.files {
            if crate::data_dir::safe_relative(&f.path).is_err() {
                return Err(self.err(
                    "taking a snapshot",
                    format!(
                        "snapshot {} lists the path {:?}, which leaves the data directory",
                        info.id, f.path
                    ),
                ));
            }
            if f.path == tsvault_storage::RESTORE_MARKER || !seen.insert(f.path.as_str()) {
                return Err(self.err(
                    "taking a snapshot",
                    format!(
                        "snapshot {} lists {:?} twice or under a reserved name",
                        info.id, f.path
                    ),
                ));
            }
        }
        Ok(info)
    }

    /// Releases snapshot `id`.
    pub async fn release_snapshot(&self, id: &str) -> Result<()> {
        let url = format!("{}/api/admin/snapshots/{id}", self.base);
        self.send(&format!("releasing snapshot {id}"), self.client.delete(url))
            .await
            .map(|_| ())
    }

    /// The bytes of file `path` of snapshot `id`, as a stream.
    async fn snapshot_file(&self, id: &str, path: &str) -> Result<reqwest::Response> {
        let url = format!("{}/api/admin/snapshots/{id}/file", self.base);
        let req = self.client.get(url).query(&[("path", path)]);
        self.send(&format!("reading {path} of snapshot {id}"), req)
            .await
    }

    /// The per-series digests of file `path` of snapshot `id` on `basis`, and the basis
    /// the server used: one from before bases existed ignores the request and answers on
    /// samples without saying so; one from before `blocks-crc32c` is asked for
    /// `blocks-xxh3` instead.
    async fn snapshot_digests(
        &self,
        id: &str,
        path: &str,
        basis: DigestBasis,
    ) -> Result<(DigestBasis, Vec<SeriesDigest>)> {
        let what = format!("digests of {path} of snapshot {id}");
        let url = format!("{}/api/admin/snapshots/{id}/digests", self.base);
        let ask = |basis: DigestBasis| {
            self.client
                .get(&url)
                .query(&[("path", path), ("basis", basis.as_str())])
                .send()
        };
        let mut resp = ask(basis).await.map_err(|e| self.err(&what, e))?;
        // A server from before `blocks-crc32c` refuses it by name (400, "basis: 'NAME' is
        // none of ..."): its blocks are then digested as that server can, on XXH3-128.
        if basis == DigestBasis::BlocksCrc32c && resp.status() == StatusCode::BAD_REQUEST {
            let msg = error_message(resp).await;
            if !msg.starts_with(&format!("basis: '{}' is none of", basis.as_str())) {
                return Err(self.err(&what, format!("{}: {msg}", StatusCode::BAD_REQUEST)));
            }
            resp = ask(DigestBasis::BlocksXxh3)
                .await
                .map_err(|e| self.err(&what, e))?;
        }
        let resp = self.check(&what, resp).await?;
        let used = match resp.headers().get("x-tsvault-digest-basis") {
            None => DigestBasis::Samples,
            Some(v) => v
                .to_str()
                .ok()
                .and_then(DigestBasis::parse)
                .ok_or_else(|| self.err(&what, format!("unknown digest basis {v:?}")))?,
        };
        Ok((used, self.body_json(&what, resp).await?))
    }

    /// Sends one import body (`POST /api/admin/import`).
    pub(crate) async fn import(&self, body: Vec<u8>) -> Result<ImportOutcome> {
        let url = format!("{}/api/admin/import", self.base);
        let req = self
            .client
            .post(url)
            .header("content-type", "application/x-ndjson")
            .body(body);
        self.json("importing restored samples", req).await
    }
}

/// The message of a failed answer: its JSON `error`, else its body (trimmed).
async fn error_message(resp: reqwest::Response) -> String {
    let body = resp.text().await.unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or(body)
        .trim()
        .to_string()
}

/// Where a backup reads from.
pub(crate) enum Source {
    /// A stopped data directory (its lock held by the caller).
    Dir(PathBuf),
    /// A snapshot a running server took for this backup.
    Server {
        client: ServerClient,
        snapshot: SnapshotInfo,
        /// The snapshot's directory when the server's data directory is on this machine:
        /// its files and digests are then read there, not asked of the server. What is read
        /// is checked against the server's listing (sizes and BLAKE3) all the same.
        local: Option<PathBuf>,
    },
    /// A snapshot this process's engine took (a backup run by the server itself): its files
    /// are read in `dir` (`snapshots/<id>/` of the data directory), checked against its
    /// listing as a server's are.
    Snapshot {
        /// The data directory's canonical path, what its backups are known by (as backups
        /// of the stopped directory are).
        name: String,
        snapshot: SnapshotInfo,
        dir: PathBuf,
    },
}

impl Source {
    /// What backups of this source are known by: the data directory's canonical path, or the
    /// server's URL.
    pub(crate) fn name(&self) -> Result<String> {
        match self {
            Source::Dir(dir) => dir_name(dir),
            Source::Server { client, .. } => Ok(client.base.clone()),
            Source::Snapshot { name, .. } => Ok(name.clone()),
        }
    }

    /// The files to back up, sorted by path.
    pub(crate) fn files(&self) -> Result<Vec<SourceFile>> {
        match self {
            Source::Dir(dir) => data_files(dir)?
                .into_iter()
                .map(|rel| {
                    let p = dir.join(&rel);
                    let md = fs::metadata(&p).map_err(Error::io("stat", &p))?;
                    Ok(SourceFile {
                        path: rel,
                        size: md.len(),
                        mtime_ns: mtime_ns(&md),
                        blake3: None,
                    })
                })
                .collect(),
            Source::Server { snapshot, .. } | Source::Snapshot { snapshot, .. } => Ok(snapshot
                .files
                .iter()
                .map(|f| SourceFile {
                    path: f.path.clone(),
                    size: f.size,
                    mtime_ns: 0,
                    blake3: Some(f.blake3.clone()),
                })
                .collect()),
        }
    }

    /// The moment the backup is the image of.
    pub(crate) fn consistency(&self) -> Result<ConsistencyPoint> {
        match self {
            Source::Dir(dir) => {
                let newest = tsvault_storage::wal_files(dir)
                    .map_err(engine_err("listing the WAL files"))?
                    .last()
                    .map_or(0, |(n, _)| *n);
                Ok(ConsistencyPoint {
                    snapshot: None,
                    wal_position: newest + 1,
                    at_ms: now_ms(),
                })
            }
            Source::Server { snapshot, .. } | Source::Snapshot { snapshot, .. } => {
                Ok(ConsistencyPoint {
                    snapshot: Some(snapshot.id.clone()),
                    wal_position: snapshot.wal_position,
                    at_ms: snapshot.created_ms,
                })
            }
        }
    }

    /// Where the files' bytes come from.
    fn reads(&self) -> Reads<'_> {
        match self {
            Source::Dir(dir) | Source::Snapshot { dir, .. } => Reads::Local(dir),
            Source::Server {
                local: Some(dir), ..
            } => Reads::Local(dir),
            Source::Server {
                client,
                snapshot,
                local: None,
            } => Reads::Http(client, snapshot),
        }
    }

    /// Where file `path` is on this machine, when the source's files are read here.
    pub(crate) fn local_path(&self, path: &str) -> Option<PathBuf> {
        match self.reads() {
            Reads::Local(dir) => Some(dir.join(path)),
            Reads::Http(..) => None,
        }
    }

    /// Opens file `path` for reading.
    pub(crate) async fn open(&self, path: &str) -> Result<FileReader> {
        match self.reads() {
            Reads::Local(dir) => {
                let p = dir.join(path);
                let file = File::open(&p).map_err(Error::io("open", &p))?;
                Ok(FileReader::Local { file, path: p })
            }
            Reads::Http(client, snapshot) => Ok(FileReader::Http {
                resp: client.snapshot_file(&snapshot.id, path).await?,
                pending: bytes::Bytes::new(),
                what: format!("{path} of snapshot {} at {}", snapshot.id, client.base),
            }),
        }
    }

    /// The per-series digests of file `path`, on the cheapest basis for it (see
    /// [`DigestBasis::for_file`]) unless the server is too old to know it, and the basis
    /// they are on.
    pub(crate) async fn digests(&self, path: &str) -> Result<(DigestBasis, Vec<SeriesDigest>)> {
        let basis = DigestBasis::for_file(path);
        match self.reads() {
            Reads::Local(dir) => {
                let p = dir.join(path);
                let d = off_thread(path, move || tsvault_storage::file_digests(&p, basis))
                    .await?
                    .map_err(|e| Error::Invalid(format!("cannot digest {path}: {e}")))?;
                Ok((basis, d))
            }
            Reads::Http(client, snapshot) => {
                client.snapshot_digests(&snapshot.id, path, basis).await
            }
        }
    }
}

/// What backups of data directory `dir` are known by: its canonical path.
pub(crate) fn dir_name(dir: &Path) -> Result<String> {
    Ok(fs::canonicalize(dir)
        .map_err(Error::io("resolve", dir))?
        .display()
        .to_string())
}

/// Where a source's files are read: a directory on this machine, or a server's snapshot
/// over HTTP.
enum Reads<'a> {
    Local(&'a Path),
    Http(&'a ServerClient, &'a SnapshotInfo),
}

/// A file being read, local or over HTTP.
pub(crate) enum FileReader {
    Local {
        file: File,
        path: PathBuf,
    },
    Http {
        resp: reqwest::Response,
        pending: bytes::Bytes,
        what: String,
    },
}

impl FileReader {
    /// Fills `buf` (cleared first) up to `max` bytes, less only at the end of the file;
    /// returns how many it holds.
    pub(crate) async fn fill(&mut self, buf: &mut Vec<u8>, max: usize) -> Result<usize> {
        buf.clear();
        match self {
            FileReader::Local { file, path } => {
                // Into the buffer's spare room: no zeroing of what is read over.
                (&mut *file)
                    .take(max as u64)
                    .read_to_end(buf)
                    .map_err(Error::io("read", &*path))?;
            }
            FileReader::Http {
                resp,
                pending,
                what,
            } => {
                while buf.len() < max {
                    if pending.is_empty() {
                        match resp.chunk().await {
                            Ok(Some(c)) => *pending = c,
                            Ok(None) => break,
                            Err(e) => {
                                return Err(Error::Invalid(format!("reading {what}: {e}")));
                            }
                        }
                    }
                    let take = pending.len().min(max - buf.len());
                    buf.extend_from_slice(&pending.split_to(take));
                }
            }
        }
        Ok(buf.len())
    }
}

/// The modification time of `md` in ns since the epoch (0 when the system has none).
fn mtime_ns(md: &fs::Metadata) -> i128 {
    md.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Every file of the data directory to back up, relative, sorted; the lock file, snapshots
/// and quarantined files are left out.
fn data_files(dir: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
        let here = root.join(rel);
        for e in fs::read_dir(&here).map_err(Error::io("list", &here))? {
            let e = e.map_err(Error::io("list", &here))?;
            let name = e.file_name().into_string().map_err(|n| {
                Error::Invalid(format!("{}: file name {n:?} is not UTF-8", here.display()))
            })?;
            let rel_path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let ty = e.file_type().map_err(Error::io("stat", e.path()))?;
            if ty.is_dir() {
                if rel.is_empty() && (name == "quarantine" || name == SNAPSHOTS_DIR) {
                    continue;
                }
                walk(root, &rel_path, out)?;
            } else if ty.is_file() {
                if rel.is_empty() && name == tsvault_storage::LOCK_FILE {
                    continue;
                }
                out.push(rel_path);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A server on a real socket that answers each digests request by its query string,
    /// as `answer` says (status, extra headers, body), and keeps the queries asked.
    fn fake_server(
        answer: fn(&str) -> (u16, &'static str, String),
    ) -> (ServerClient, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let asked = Arc::new(Mutex::new(Vec::new()));
        let seen = asked.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                // The rest of the head; a GET has no body.
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 2 {
                    line.clear();
                }
                let target = request_line.split(' ').nth(1).unwrap_or("").to_string();
                let query = target.split_once('?').map_or("", |(_, q)| q).to_string();
                let (status, headers, body) = answer(&query);
                seen.lock().unwrap().push(query);
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                conn.write_all(reply.as_bytes()).unwrap();
            }
        });
        (ServerClient::new(&url).unwrap(), asked)
    }

    const DIGESTS: &str = r#"[{"series":"cpu{host=a}","samples":3,"min_ts_ms":1,"max_ts_ms":3,"blake3":"000102030405060708090a0b0c0d0e0f"}]"#;

    #[tokio::test]
    async fn a_server_from_before_blocks_crc32c_is_asked_for_blocks_xxh3() {
        let (client, asked) = fake_server(|query| {
            if query.contains("basis=blocks-crc32c") {
                let refusal = r#"{"error":"basis: 'blocks-crc32c' is none of 'samples', 'blocks' and 'blocks-xxh3'"}"#;
                (400, "", refusal.to_string())
            } else {
                (
                    200,
                    "x-tsvault-digest-basis: blocks-xxh3\r\n",
                    DIGESTS.to_string(),
                )
            }
        });
        let (basis, digests) = client
            .snapshot_digests("s1", "seg/1.seg", DigestBasis::BlocksCrc32c)
            .await
            .unwrap();
        assert_eq!(basis, DigestBasis::BlocksXxh3);
        assert_eq!(digests.len(), 1);
        assert_eq!(digests[0].series, "cpu{host=a}");
        assert_eq!(
            digests[0].hash.to_string(),
            "000102030405060708090a0b0c0d0e0f"
        );
        let asked = asked.lock().unwrap().clone();
        assert_eq!(asked.len(), 2, "{asked:?}");
        assert!(asked[0].contains("basis=blocks-crc32c"), "{asked:?}");
        assert!(asked[1].contains("basis=blocks-xxh3"), "{asked:?}");
    }

    #[tokio::test]
    async fn any_other_refusal_of_digests_is_an_error_with_the_servers_message() {
        let (client, asked) = fake_server(|_| {
            let refusal = r#"{"error":"no snapshot s1"}"#;
            (400, "", refusal.to_string())
        });
        let err = client
            .snapshot_digests("s1", "seg/1.seg", DigestBasis::BlocksCrc32c)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("digests of seg/1.seg of snapshot s1: 400 Bad Request: no snapshot s1"),
            "{err}"
        );
        assert_eq!(asked.lock().unwrap().len(), 1, "asked once, not again");
    }
}
