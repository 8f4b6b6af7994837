//! The same repository on S3, served in-process over real HTTP by s3s + s3s-fs (SigV4
//! authentication, conditional puts), reached through object_store's S3 client.

use std::path::Path;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tsvault_backup::{
    Cipher, NoProgress, RepoOptions, Repository, backup_data_dir, restore_data_dir, verify_backup,
};
use tsvault_model::{Point, ReadCap, SeriesKey};
use tsvault_storage::{Engine, EngineConfig};

const KEY: &str = "tsvault-test-key";
const SECRET: &str = "tsvault-test-secret";

/// An S3 server on a free loopback port storing under `root`; returns its endpoint.
async fn start_s3(root: &Path) -> String {
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut b = S3ServiceBuilder::new(fs);
    b.set_auth(SimpleAuth::from_single(KEY, SECRET));
    let service = b.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    format!("http://{addr}")
}

fn opts(endpoint: &str, url: &str, password: &str) -> RepoOptions {
    RepoOptions {
        url: url.to_string(),
        password: Some(password.as_bytes().to_vec()),
        s3_endpoint: Some(endpoint.to_string()),
        s3_allow_http: true,
        s3_credentials: Some((KEY.into(), SECRET.into())),
        s3_region: Some("us-east-1".into()),
        ..RepoOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_through_s3() {
    let tmp = tempfile::tempdir().unwrap();
    let s3_root = tmp.path().join("s3");
    std::fs::create_dir_all(s3_root.join("backups-bucket")).unwrap();
    let endpoint = start_s3(&s3_root).await;
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    {
        let e = Engine::open(EngineConfig::new(&src)).unwrap();
        let key = SeriesKey::new("m", &[("host", "a")]).unwrap();
        let points: Vec<Point> = (0..5000)
            .map(|i| Point {
                key: key.clone(),
                ts_ms: 1_700_000_000_000 + i * 1000,
                value: i as f64 * 0.25,
            })
            .collect();
        e.write(&points).unwrap();
        e.close().unwrap();
    }
    let url = "s3://backups-bucket/team/tsvault";
    let repo = Repository::init(&opts(&endpoint, url, "pw"), Some(Cipher::Aes256Gcm))
        .await
        .unwrap();
    let b = backup_data_dir(&repo, &src, None, &NoProgress)
        .await
        .unwrap();
    assert!(b.uploaded_bytes > 0);
    // The objects are under the prefix, in the bucket's directory.
    assert!(s3_root.join("backups-bucket/team/tsvault/config").is_file());
    assert!(
        s3_root
            .join(format!("backups-bucket/team/tsvault/backups/{}", b.id))
            .is_file()
    );

    // A second init is refused by the conditional put.
    let err = Repository::init(&opts(&endpoint, url, "pw"), Some(Cipher::Aes256Gcm))
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("already holds a repository"),
        "{err}"
    );

    let repo = Repository::open(&opts(&endpoint, url, "pw")).await.unwrap();
    assert!(verify_backup(&repo, &b.id, true).await.is_empty());
    restore_data_dir(&repo, None, &dst, &NoProgress)
        .await
        .unwrap();
    let read = |dir: &Path| {
        let e = Engine::open(EngineConfig::new(dir)).unwrap();
        let out = e
            .select("m", &|_| true, (0, i64::MAX / 4), ReadCap::NONE)
            .unwrap();
        e.close().unwrap();
        out
    };
    let got = read(&dst);
    assert_eq!(got[0].1.len(), 5000);
    assert_eq!(got, read(&src));

    let err = Repository::open(&opts(&endpoint, url, "not it"))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().starts_with("wrong passphrase"), "{err}");
}
