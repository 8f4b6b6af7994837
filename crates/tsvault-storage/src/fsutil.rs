//! Durable file-system steps: directory fsync and atomic replace.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::powercut;

/// Fsyncs a directory so that entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    powercut::point();
    File::open(dir)
        .ctx("open", dir)?
        .sync_all()
        .ctx("fsync", dir)?;
    powercut::dir_synced(dir);
    powercut::point();
    Ok(())
}

/// Fsyncs `file` (at `path`): its data, and with `data_only` false its metadata too.
pub(crate) fn fsync(file: &File, path: &Path, data_only: bool) -> Result<()> {
    powercut::point();
    if data_only {
        file.sync_data()
    } else {
        file.sync_all()
    }
    .ctx("fsync", path)?;
    powercut::file_synced(file);
    powercut::point();
    Ok(())
}

/// Renames `from` to `to` (durable once their directories are fsynced).
pub(crate) fn rename(from: &Path, to: &Path) -> Result<()> {
    powercut::point();
    powercut::before_unlink(from);
    powercut::before_unlink(to);
    fs::rename(from, to).ctx("rename", from)?;
    powercut::point();
    Ok(())
}

/// Removes file `path` (durable once its directory is fsynced).
pub(crate) fn remove_file(path: &Path) -> Result<()> {
    powercut::point();
    powercut::before_unlink(path);
    fs::remove_file(path).ctx("remove", path)?;
    powercut::point();
    Ok(())
}

/// Creates `path` holding `bytes`, fsynced (its directory entry is durable once the
/// directory is fsynced).
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).ctx("create", path)?;
    f.write_all(bytes).ctx("write", path)?;
    fsync(&f, path, false)
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, directory fsync.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    // A write that fails part-way (a full disk) leaves no temporary file to fill the disk
    // further or to be found by the next try.
    write_synced(&tmp, bytes).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    rename(&tmp, path)?;
    #[cfg(feature = "failpoints")]
    fail::fail_point!(
        "manifest-dir-fsync",
        path.file_name() == Some(crate::manifest::MANIFEST_FILE.as_ref()),
        |arg: Option<String>| Err(crate::error::Error::Io {
            op: "fsync",
            path: dir.to_owned(),
            source: crate::error::injected("manifest-dir-fsync", arg.as_deref()),
        })
    );
    sync_dir(dir)
}
