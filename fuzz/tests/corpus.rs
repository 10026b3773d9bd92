//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) and the reproducers of fixed
//! crashes and hangs (`fuzz/crashes/<target>/*`) through the fuzz targets: what CI runs of the
//! fuzzing (scripts/fuzz runs the fuzzer itself and adds what it finds here).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One input of the corpus must take far less; a slow input is a hang in the making.
const MAX_INPUT_TIME: Duration = Duration::from_secs(5);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_none_or(|n| n != "README.md"))
        .collect();
    files.sort();
    files
}

fn replay(kind: &str, name: &str, target: bunker_fuzz::Target) -> usize {
    let dir = root().join(kind).join(name);
    let inputs = files(&dir);
    for path in &inputs {
        let data = std::fs::read(path).unwrap();
        let started = Instant::now();
        target(&data);
        let took = started.elapsed();
        assert!(
            took < MAX_INPUT_TIME,
            "{} took {took:?} (a hang in the making)",
            path.display()
        );
    }
    inputs.len()
}

#[test]
fn every_target_has_a_seeded_corpus_and_it_replays() {
    let mut summary = Vec::new();
    for (name, target) in bunker_fuzz::TARGETS {
        let n = replay("corpus", name, *target);
        assert!(n > 0, "fuzz/corpus/{name} is empty");
        summary.push(format!("{name}: {n}"));
    }
    eprintln!("replayed corpus inputs: {}", summary.join(", "));
}

#[test]
fn fixed_crash_reproducers_replay() {
    let mut total = 0;
    for (name, target) in bunker_fuzz::TARGETS {
        total += replay("crashes", name, *target);
    }
    eprintln!("replayed crash and hang reproducers: {total}");
}

#[test]
fn the_corpus_folders_are_the_targets() {
    for kind in ["corpus", "crashes"] {
        let Ok(entries) = std::fs::read_dir(root().join(kind)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                assert!(
                    bunker_fuzz::target(&name).is_some(),
                    "fuzz/{kind}/{name} is not a fuzz target"
                );
            }
        }
    }
}
