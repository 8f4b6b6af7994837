//! Writes the seed corpora of the fuzz targets under `fuzz/seeds/` from a small store built
//! here: `cargo run -p tsvault-storage --example fuzz_seeds -- fuzz/seeds`.

use std::path::Path;

use tsvault_model::{Point, SeriesKey};
use tsvault_storage::{Engine, EngineConfig, fuzzing};

fn main() {
    let out = std::env::args()
        .nth(1)
        .expect("usage: fuzz_seeds <corpus dir>");
    let out = Path::new(&out);
    let tmp = tempfile::tempdir().expect("scratch directory");
    let dir = tmp.path();
    let e = Engine::open(EngineConfig::new(dir)).expect("open");
    let keys: Vec<SeriesKey> = (0..3)
        .map(|h| SeriesKey::new("cpu", &[("host", &format!("h{h}"))]).expect("key"))
        .collect();
    let t0 = 1_700_000_000_000i64;
    // Regular and irregular timestamps, integer and fractional values.
    let pts: Vec<Point> = (0..200)
        .flat_map(|i| {
            keys.iter().enumerate().map(move |(k, key)| Point {
                key: key.clone(),
                ts_ms: t0 + i * 10_000 + if k == 2 { i * i % 7 } else { 0 },
                value: if k == 1 {
                    i as f64 * 0.25
                } else {
                    (i % 17) as f64
                },
            })
        })
        .collect();
    e.write(&pts[..300]).expect("write");
    e.flush().expect("flush");
    e.write(&pts[300..]).expect("write");
    e.close_without_flush();
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let d = out.join(target);
        std::fs::create_dir_all(&d).expect("corpus directory");
        std::fs::write(d.join(name), bytes).expect("seed");
    };
    put(
        "manifest",
        "manifest",
        &std::fs::read(dir.join("MANIFEST")).expect("manifest"),
    );
    for (n, path) in tsvault_storage::wal_files(dir).expect("wal files") {
        put(
            "wal",
            &format!("wal-{n}"),
            &std::fs::read(path).expect("wal"),
        );
    }
    for entry in std::fs::read_dir(dir.join("segments")).expect("segments") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        put("segment", &name, &std::fs::read(&path).expect("segment"));
        let (blocks, index) = fuzzing::seeds_from_segment(&path).expect("seeds");
        for (i, b) in blocks.iter().enumerate() {
            put("segment_block", &format!("{name}-block{i}"), b);
        }
        put("segment_index", &format!("{name}-index"), &index);
    }
    println!("seeds written under {}", out.display());
}
