//! Replays every committed fuzz input (`fuzz/corpus/<target>/*`: the seeds, and any input a
//! fuzzer once broke the code with) through its target: none may panic.

use std::path::Path;

#[test]
fn every_committed_input_runs_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for target in pgp_fuzz::TARGETS {
        let dir = root.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no seed inputs", dir.display());
        for f in files {
            let data = std::fs::read(&f).unwrap();
            let run = std::panic::catch_unwind(|| pgp_fuzz::run(target, &data));
            assert!(run.is_ok(), "{target}: {} panicked", f.display());
        }
    }
}
