//! The documented order of settings, flags over `TSVAULT_*` environment variables over the
//! file over the defaults, holds for every key of `tsvault serve`, booleans included
//! (a flag or variable could not set one false over a file's true), read back through
//! `--print-config`.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

/// `tsvault serve --print-config` with `file` as the config file (when given), these
/// environment variables (every other TSVAULT_* removed) and flags.
fn effective(file: Option<&Path>, env: &[(&str, &str)], flags: &[&str]) -> Result<Value, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tsvault"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TSVAULT_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("serve").arg("--print-config");
    if let Some(f) = file {
        cmd.arg("--config").arg(f);
    }
    let out = cmd.envs(env.iter().copied()).args(flags).output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

struct Key {
    /// The flag without its dashes, also the file's key.
    name: &'static str,
    /// Its environment variable.
    env: &'static str,
    /// Where `--print-config` shows it.
    shown: &'static str,
    /// (as written, as shown) in the file, the environment and the flags.
    file: (&'static str, Value),
    env_value: (&'static str, Value),
    flag: (&'static str, Value),
}

fn keys() -> Vec<Key> {
    let k = |name,
             env,
             shown,
             file: (&'static str, Value),
             env_value: (&'static str, Value),
             flag: (&'static str, Value)| Key {
        name,
        env,
        shown,
        file,
        env_value,
        flag,
    };
    vec![
        k(
            "listen",
            "TSVAULT_LISTEN",
            "listen",
            ("\"0.0.0.0:1\"", json!("0.0.0.0:1")),
            ("0.0.0.0:2", json!("0.0.0.0:2")),
            ("0.0.0.0:3", json!("0.0.0.0:3")),
        ),
        k(
            "data-dir",
            "TSVAULT_DATA_DIR",
            "data-dir",
            ("\"/d1\"", json!("/d1")),
            ("/d2", json!("/d2")),
            ("/d3", json!("/d3")),
        ),
        k(
            "retention",
            "TSVAULT_RETENTION",
            "retention-ms",
            ("\"1d\"", json!(86_400_000)),
            ("2d", json!(172_800_000)),
            ("unlimited", Value::Null),
        ),
        k(
            "segment-duration",
            "TSVAULT_SEGMENT_DURATION",
            "segment-duration-ms",
            ("\"1h\"", json!(3_600_000)),
            ("2h", json!(7_200_000)),
            ("3h", json!(10_800_000)),
        ),
        k(
            "max-body-bytes",
            "TSVAULT_MAX_BODY_BYTES",
            "max-body-bytes",
            ("1000", json!(1000)),
            ("2000", json!(2000)),
            ("3000", json!(3000)),
        ),
        k(
            "max-buffered-bytes",
            "TSVAULT_MAX_BUFFERED_BYTES",
            "max-buffered-bytes",
            ("100000000", json!(100_000_000)),
            ("200000000", json!(200_000_000)),
            ("300000000", json!(300_000_000)),
        ),
        k(
            "max-connections",
            "TSVAULT_MAX_CONNECTIONS",
            "max-connections",
            ("10", json!(10)),
            ("20", json!(20)),
            ("30", json!(30)),
        ),
        k(
            "header-timeout",
            "TSVAULT_HEADER_TIMEOUT",
            "header-timeout-ms",
            ("\"1s\"", json!(1000)),
            ("2s", json!(2000)),
            ("3s", json!(3000)),
        ),
        k(
            "body-timeout",
            "TSVAULT_BODY_TIMEOUT",
            "body-timeout-ms",
            ("\"1s\"", json!(1000)),
            ("2s", json!(2000)),
            ("3s", json!(3000)),
        ),
        k(
            "shutdown-timeout",
            "TSVAULT_SHUTDOWN_TIMEOUT",
            "shutdown-timeout-ms",
            ("\"1s\"", json!(1000)),
            ("2s", json!(2000)),
            ("3s", json!(3000)),
        ),
        k(
            "query-concurrency",
            "TSVAULT_QUERY_CONCURRENCY",
            "query-concurrency",
            ("5", json!(5)),
            ("6", json!(6)),
            ("7", json!(7)),
        ),
        k(
            "query-samples-max",
            "TSVAULT_QUERY_SAMPLES_MAX",
            "query-samples-max",
            ("5", json!(5)),
            ("6", json!(6)),
            ("7", json!(7)),
        ),
        k(
            "head-samples-max",
            "TSVAULT_HEAD_SAMPLES_MAX",
            "head-samples-max",
            ("5", json!(5)),
            ("6", json!(6)),
            ("7", json!(7)),
        ),
        k(
            "quarantine-corrupt",
            "TSVAULT_QUARANTINE_CORRUPT",
            "quarantine-corrupt",
            ("true", json!(true)),
            ("0", json!(false)),
            ("true", json!(true)),
        ),
        k(
            "fsync",
            "TSVAULT_FSYNC",
            "fsync",
            ("\"interval\"", json!("interval")),
            ("always", json!("always")),
            ("interval", json!("interval")),
        ),
        k(
            "backup-repo",
            "TSVAULT_BACKUP_REPO",
            "backup-repo",
            ("\"/r1\"", json!("/r1")),
            ("/r2", json!("/r2")),
            ("/r3", json!("/r3")),
        ),
        k(
            "backup-every",
            "TSVAULT_BACKUP_EVERY",
            "backup-every-ms",
            ("\"1h\"", json!(3_600_000)),
            ("2h", json!(7_200_000)),
            ("3h", json!(10_800_000)),
        ),
        k(
            "backup-s3-endpoint",
            "TSVAULT_BACKUP_S3_ENDPOINT",
            "backup-s3-endpoint",
            ("\"http://a\"", json!("http://a")),
            ("http://b", json!("http://b")),
            ("http://c", json!("http://c")),
        ),
        k(
            "backup-s3-allow-http",
            "TSVAULT_BACKUP_S3_ALLOW_HTTP",
            "backup-s3-allow-http",
            ("true", json!(true)),
            ("false", json!(false)),
            ("true", json!(true)),
        ),
    ]
}

#[test]
fn flags_over_environment_over_file_over_defaults_for_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = effective(None, &[], &[]).unwrap();
    for key in keys() {
        // The backup keys need a repository; it is named in every file and run alike.
        let base = if key.name.starts_with("backup-") && key.name != "backup-repo" {
            "backup-repo = \"/repo\"\n"
        } else {
            ""
        };
        let file = dir.path().join(format!("{}.toml", key.name));
        std::fs::write(&file, format!("{base}{} = {}\n", key.name, key.file.0)).unwrap();
        let only_base = dir.path().join(format!("{}-base.toml", key.name));
        std::fs::write(&only_base, base).unwrap();
        let flag = format!("--{}={}", key.name, key.flag.0);
        let shown = |v: &Value| v[key.shown].clone();
        let default = effective(Some(&only_base), &[], &[]).unwrap();
        // With a repository and nothing else, a backup key has its default too.
        let want_default = match key.name {
            "backup-every" | "backup-s3-endpoint" | "backup-repo" => Value::Null,
            "backup-s3-allow-http" => json!(false),
            _ => defaults[key.shown].clone(),
        };
        assert_eq!(shown(&default), want_default, "{}: default", key.name);
        assert_ne!(
            want_default, key.file.1,
            "{}: the test must tell the levels apart",
            key.name
        );
        let from_file =
            effective(Some(&file), &[], &[]).unwrap_or_else(|e| panic!("{}: {e}", key.name));
        assert_eq!(
            shown(&from_file),
            key.file.1,
            "{}: the file over the default",
            key.name
        );
        let from_env = effective(Some(&file), &[(key.env, key.env_value.0)], &[])
            .unwrap_or_else(|e| panic!("{}: {e}", key.name));
        assert_eq!(
            shown(&from_env),
            key.env_value.1,
            "{}: the environment over the file",
            key.name
        );
        let from_flag = effective(Some(&file), &[(key.env, key.env_value.0)], &[&flag])
            .unwrap_or_else(|e| panic!("{}: {e}", key.name));
        assert_eq!(
            shown(&from_flag),
            key.flag.1,
            "{}: the flag over the environment",
            key.name
        );
        assert_ne!(
            key.file.1, key.env_value.1,
            "{}: the test must tell the levels apart",
            key.name
        );
        assert_ne!(
            key.env_value.1, key.flag.1,
            "{}: the test must tell the levels apart",
            key.name
        );
    }
}

/// Booleans can be set false above a true, and take 1/0, yes/no as well.
#[test]
fn booleans_can_be_turned_off_from_above() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "quarantine-corrupt = true\n").unwrap();
    let q = |env: &[(&str, &str)], flags: &[&str]| {
        effective(Some(&file), env, flags).unwrap()["quarantine-corrupt"].clone()
    };
    assert_eq!(q(&[], &["--quarantine-corrupt=false"]), json!(false));
    assert_eq!(
        q(&[("TSVAULT_QUARANTINE_CORRUPT", "no")], &[]),
        json!(false)
    );
    assert_eq!(q(&[("TSVAULT_QUARANTINE_CORRUPT", "1")], &[]), json!(true));
    assert_eq!(
        effective(None, &[], &["--quarantine-corrupt"]).unwrap()["quarantine-corrupt"],
        json!(true)
    );
    let e = effective(None, &[("TSVAULT_QUARANTINE_CORRUPT", "maybe")], &[]).unwrap_err();
    assert!(e.contains("maybe"), "{e}");
}

/// `--fsync always` overrides a file's interval policy and its interval (it was refused as
/// a contradiction); an interval given beside `always` at the same level still is one.
#[test]
fn fsync_always_overrides_a_files_interval() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "fsync = \"interval\"\nfsync-interval = \"250ms\"\n").unwrap();
    let c = effective(Some(&file), &[], &["--fsync", "always"]).unwrap();
    assert_eq!(
        (c["fsync"].clone(), c["fsync-interval-ms"].clone()),
        (json!("always"), Value::Null)
    );
    let c = effective(Some(&file), &[], &[]).unwrap();
    assert_eq!(c["fsync-interval-ms"], json!(250));
    let e = effective(None, &[], &["--fsync", "always", "--fsync-interval", "1s"]).unwrap_err();
    assert!(e.contains("needs --fsync interval"), "{e}");
}

/// A relative path in the file is relative to the file's directory (it was relative to the
/// working directory).
#[test]
fn relative_paths_in_the_file_are_relative_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "data-dir = \"data\"\n").unwrap();
    let c = effective(Some(&file), &[], &[]).unwrap();
    assert_eq!(c["data-dir"], json!(dir.path().join("data")));
    // A flag's relative path stays the working directory's.
    let c = effective(Some(&file), &[], &["--data-dir", "here"]).unwrap();
    assert_eq!(c["data-dir"], json!("here"));
    std::fs::write(dir.path().join("pw"), "secret\n").unwrap();
    std::fs::write(
        &file,
        "backup-repo = \"/r\"\nbackup-password-file = \"pw\"\n",
    )
    .unwrap();
    let c = effective(Some(&file), &[], &[]).unwrap();
    assert_eq!(c["backup-password-file"], json!(dir.path().join("pw")));
    assert_eq!(c["backup-password-set"], json!(true));
}
