//! The live segments as the engine holds them, and how a start finds them: the manifest, the
//! series file, and each segment opened from its footer (or verified whole when the series
//! file cannot be used, or with `--quarantine-corrupt`); what a crash left is tidied here.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::engine::{EngineConfig, Inner, QuarantinedFile, quarantine};
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::index::{Registry, SeriesId};
use crate::manifest::{MANIFEST_FILE, Manifest};
use crate::segment::{BlockLoc, BlockMeta, Segment, segment_file_name};
use crate::series_file::{self, SeriesFile};
use crate::wal::list_wal_files;

/// A live segment and, once its index is read (on first use, or by the verification that
/// follows a start), each series' block in it.
pub(crate) struct LoadedSegment {
    pub(crate) seg: Segment,
    by_series: OnceLock<HashMap<SeriesId, u32>>,
}

impl LoadedSegment {
    pub(crate) fn new(seg: Segment) -> Self {
        LoadedSegment {
            seg,
            by_series: OnceLock::new(),
        }
    }

    /// The segment's blocks and each series' block among them, read and checked on first
    /// use (an `Error::Corrupt` naming the file when it is damaged). A key the series
    /// index lacks (a series file that missed it) is registered now and reported. The
    /// caller must not hold the registry's lock.
    pub(crate) fn index(&self, inner: &Inner) -> Result<(&[BlockLoc], &HashMap<SeriesId, u32>)> {
        let blocks = self.seg.blocks()?;
        if let Some(m) = self.by_series.get() {
            return Ok((blocks, m));
        }
        let keyed = self.seg.keyed_blocks()?;
        let mut map = HashMap::with_capacity(keyed.len());
        let mut missing = Vec::new();
        {
            let registry = inner.registry.read();
            for (i, b) in keyed.iter().enumerate() {
                match registry.get(&b.key) {
                    Some(id) => {
                        map.insert(id, i as u32);
                    }
                    None => missing.push(i),
                }
            }
        }
        if !missing.is_empty() {
            tracing::error!(
                file = %self.seg.path.display(),
                series = missing.len(),
                "the series index lacked series this segment holds; they are registered now, and written to the series file with the next flush"
            );
            let mut registry = inner.registry.write();
            for i in missing {
                map.insert(registry.get_or_insert(&keyed[i].key), i as u32);
            }
        }
        Ok((blocks, self.by_series.get_or_init(|| map)))
    }
}

/// A segment verified whole, its series (its `keyed` blocks) registered.
pub(crate) fn index_segment(
    seg: Segment,
    keyed: &[BlockMeta],
    registry: &mut Registry,
) -> Result<LoadedSegment> {
    let blocks: HashMap<SeriesId, u32> = keyed
        .iter()
        .enumerate()
        .map(|(i, b)| (registry.get_or_insert(&b.key), i as u32))
        .collect();
    Ok(LoadedSegment {
        seg,
        by_series: OnceLock::from(blocks),
    })
}

/// Loads the manifest, the series it knows, and every segment it lists. With the series
/// file usable, a segment is checked from its size and footer (against the manifest), its
/// index on first use and its whole file by the verification after start: a start that
/// does not grow with the data. Otherwise (no usable series file, a rebuilt manifest, or
/// `quarantine_corrupt`) every segment is verified whole now and its series registered (a
/// series the file lacks is appended to it with the next manifest); without a usable file,
/// `None` is returned, for one to be written anew. With `quarantine_corrupt`, damaged
/// segments (or a damaged manifest, rebuilt from the segment files) are moved aside and
/// reported instead of stopping the start.
pub(crate) fn load_segments(
    config: &EngineConfig,
    dir: &Path,
    seg_dir: &Path,
    registry: &mut Registry,
    quarantined: &mut Vec<QuarantinedFile>,
    rebuilt: &mut bool,
) -> Result<(Manifest, Vec<Arc<LoadedSegment>>, Option<SeriesFile>)> {
    let mut manifest = match Manifest::load(dir) {
        Ok(Some(m)) => m,
        // No manifest but segment files: a first flush cut short before its manifest was
        // written (the WAL still holds its data), or a manifest lost since. Either way the
        // segments are rebuilt into one and the whole WAL replayed on top (a sample in both
        // has the same value); taking them for strays would delete every segment.
        Ok(None) if has_segment_files(seg_dir)? => {
            // WAL files are removed only after a manifest that no longer needs them is
            // installed: when the first is gone, a manifest existed and was lost, and the
            // segments it listed may be gone too (nothing here can tell).
            let lowest = list_wal_files(&dir.join("wal"))?.first().map(|(n, _)| *n);
            if let Some(n) = lowest.filter(|&n| n > 1) {
                let detail = format!(
                    "MANIFEST is missing, and a manifest existed (the WAL starts at file {n}: earlier files were removed after flushes): segments it listed may be missing too; start with --quarantine-corrupt to rebuild it from the segment files there"
                );
                if !config.quarantine_corrupt {
                    return Err(Error::Corrupt {
                        path: dir.join(MANIFEST_FILE),
                        detail,
                    });
                }
                quarantined.push(QuarantinedFile {
                    file: dir.join(MANIFEST_FILE),
                    moved_to: PathBuf::new(),
                    reason: detail,
                    lost: "any segment the lost manifest listed that is not there".into(),
                });
            }
            tracing::warn!(dir = %dir.display(), "MANIFEST is missing but segment files exist: rebuilding it from them and replaying the whole WAL");
            *rebuilt = true;
            rebuild_manifest(dir, seg_dir, quarantined, config.quarantine_corrupt)?
        }
        Ok(None) => Manifest::new(),
        Err(Error::Corrupt { path, detail }) if config.quarantine_corrupt => {
            let q = quarantine(dir, &path, detail, "the list of live segments; rebuilt from the segment files, and the WAL is replayed from its oldest file".into())?;
            quarantined.push(q);
            rebuild_manifest(dir, seg_dir, quarantined, true)?
        }
        Err(e) => return Err(e),
    };
    // A rebuilt manifest records no series file. (A file that can be used is kept even
    // when every segment is verified now: writing it anew, then crashing before the manifest
    // naming it is stored, would leave a file that disagrees with the manifest.)
    let series = if *rebuilt {
        None
    } else {
        match series_file::open(dir, manifest.series_file)? {
            Ok((file, keys)) => {
                for k in &keys {
                    registry.insert_persisted(k);
                }
                Some(file)
            }
            Err(u) => {
                if u.damaged {
                    tracing::warn!(why = %u.why, "the series file is damaged: every segment is read now, and the file written anew");
                } else {
                    tracing::info!(why = %u.why, "no series file yet: every segment is read now, and the file written");
                }
                None
            }
        }
    };
    let mut loaded = Vec::new();
    let mut kept = Vec::new();
    for info in &manifest.segments {
        let path = seg_dir.join(segment_file_name(info.seq));
        let opened = if series.is_some() && !config.quarantine_corrupt {
            Segment::open_footer(&path, info).map(LoadedSegment::new)
        } else {
            Segment::open_verified(&path, info)
                .and_then(|(seg, keyed)| index_segment(seg, &keyed, registry))
        };
        match opened {
            Ok(seg) => {
                loaded.push(Arc::new(seg));
                kept.push(info.clone());
            }
            Err(Error::Corrupt { path, detail }) if config.quarantine_corrupt => {
                let lost = format!(
                    "{} samples of {} series in partition {}..{} ms",
                    info.samples, info.series, info.partition_start_ms, info.partition_end_ms
                );
                quarantined.push(quarantine(dir, &path, detail, lost)?);
            }
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                let e = Error::Corrupt {
                    path: path.clone(),
                    detail: "listed in the manifest but missing".into(),
                };
                if !config.quarantine_corrupt {
                    return Err(e);
                }
                quarantined.push(QuarantinedFile {
                    file: path,
                    moved_to: PathBuf::new(),
                    reason: "listed in the manifest but missing".into(),
                    lost: format!("{} samples of {} series", info.samples, info.series),
                });
            }
            Err(e) => return Err(e),
        }
    }
    manifest.segments = kept;
    Ok((manifest, loaded, series))
}

/// Whether `seg_dir` holds any segment file.
fn has_segment_files(seg_dir: &Path) -> Result<bool> {
    for entry in fs::read_dir(seg_dir).ctx("list", seg_dir)? {
        let name = entry.ctx("list", seg_dir)?.file_name();
        if name.to_str().is_some_and(|n| n.ends_with(".seg")) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A manifest listing every segment file of `seg_dir`; a damaged one is set aside when
/// `quarantine_corrupt`, else an error.
fn rebuild_manifest(
    dir: &Path,
    seg_dir: &Path,
    quarantined: &mut Vec<QuarantinedFile>,
    quarantine_corrupt: bool,
) -> Result<Manifest> {
    let mut m = Manifest::new();
    let mut seqs = Vec::new();
    for entry in fs::read_dir(seg_dir).ctx("list", seg_dir)? {
        let entry = entry.ctx("list", seg_dir)?;
        if let Some(seq) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    for seq in seqs {
        let path = seg_dir.join(segment_file_name(seq));
        match Segment::open(&path, seq, None) {
            Ok(seg) => m.segments.push(seg.info.clone()),
            Err(Error::Corrupt { path, detail }) if quarantine_corrupt => {
                quarantined.push(quarantine(dir, &path, detail, "an unknown part of the data: the manifest that described this segment was damaged too".into())?);
            }
            Err(e) => return Err(e),
        }
        m.next_segment_seq = seq + 1;
    }
    Ok(m)
}

/// Removes what a crash can leave behind: temporary files, and segment files that no
/// manifest lists (written by a flush or compaction whose manifest update never happened).
pub(crate) fn remove_stray_files(seg_dir: &Path, manifest: &Manifest) -> Result<()> {
    for entry in fs::read_dir(seg_dir).ctx("list", seg_dir)? {
        let entry = entry.ctx("list", seg_dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stray = name.ends_with(".tmp")
            || name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|seq| {
                    seq >= manifest.next_segment_seq
                        || !manifest.segments.iter().any(|s| s.seq == seq)
                });
        if stray {
            let p = entry.path();
            tracing::info!(file = %p.display(), "removing a file left by an interrupted flush or compaction");
            fsutil::remove_file(&p)?;
        }
    }
    let tmp = seg_dir
        .parent()
        .map(|d| d.join(MANIFEST_FILE).with_extension("tmp"));
    if let Some(tmp) = tmp.filter(|t| t.exists()) {
        fsutil::remove_file(&tmp)?;
    }
    Ok(())
}
