//! Replays the committed fuzz inputs (`fuzz/seeds/<target>/` and `fuzz/regressions/<target>/`)
//! through the same `ptth::fuzzing` entry points the libFuzzer targets call, on stable, so every
//! `cargo test` covers every seed and every crash ever found.

use std::path::{Path, PathBuf};

/// A fuzz entry point.
type EntryPoint = fn(&[u8]);

/// Every fuzz target and its entry point. A directory under `fuzz/seeds/` or
/// `fuzz/regressions/` with a name not listed here fails the test.
const TARGETS: &[(&str, EntryPoint)] = &[
    ("upgrade_request_head", ptth::fuzzing::upgrade_request_head),
    (
        "switching_response_head",
        ptth::fuzzing::switching_response_head,
    ),
    ("token_lists", ptth::fuzzing::token_lists),
    ("relay_route", ptth::fuzzing::relay_route),
    ("chunked_body", ptth::fuzzing::chunked_body),
    ("dialer_stream", ptth::fuzzing::dialer_stream),
    ("listener_stream", ptth::fuzzing::listener_stream),
    ("h1_exchange", ptth::fuzzing::h1_exchange),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn entry_point(target: &str) -> EntryPoint {
    TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("fuzz/…/{target}: no such fuzz target"))
        .1
}

/// Run every file under `fuzz/<kind>/<target>/` through its target; return how many ran.
fn replay(kind: &str) -> usize {
    let root = fuzz_dir().join(kind);
    let Ok(dirs) = std::fs::read_dir(&root) else {
        return 0;
    };
    let mut count = 0;
    let mut dirs: Vec<_> = dirs.map(|d| d.unwrap().path()).collect();
    dirs.sort();
    for dir in dirs.into_iter().filter(|d| d.is_dir()) {
        let target = dir.file_name().unwrap().to_string_lossy().into_owned();
        let run = entry_point(&target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|f| f.unwrap().path())
            .filter(|f| f.is_file())
            .collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{} panicked", file.display());
            count += 1;
        }
    }
    count
}

#[test]
fn seeds_replay_clean() {
    let n = replay("seeds");
    assert!(n > 0, "no seeds found under fuzz/seeds");
    for (target, _) in TARGETS {
        assert!(
            fuzz_dir().join("seeds").join(target).is_dir(),
            "fuzz/seeds/{target} is missing"
        );
    }
    println!("replayed {n} seed inputs");
}

#[test]
fn regressions_replay_clean() {
    let n = replay("regressions");
    // A moved or emptied directory must not make this test pass with nothing replayed.
    assert!(n > 0, "no regression inputs found under fuzz/regressions");
    println!("replayed {n} regression inputs");
}

/// The targets that read a stream must also survive the empty input and one control byte.
#[test]
fn trivial_inputs() {
    for (_, run) in TARGETS {
        for data in [&b""[..], b"\x00", b"\xff", b"~~~~"] {
            run(data);
        }
    }
}
