//! Helpers shared by the unit tests.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::{Digest, Store, reapi};

/// A fresh store in a temp dir (the store lives in `<tmp>/cache`; tests put inputs in `<tmp>`).
pub(crate) fn store_in() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("cache")).unwrap();
    (dir, store)
}

/// Set the file's mtime an hour back, so the stat cache does not treat it as racy.
pub(crate) fn set_old_mtime(p: &Path) {
    let f = std::fs::File::options().write(true).open(p).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
}

/// An `ActionResult` with the given output files.
pub(crate) fn result_with(outputs: &[(&str, Digest)]) -> reapi::ActionResult {
    reapi::ActionResult {
        output_files: outputs
            .iter()
            .map(|(p, d)| reapi::OutputFile {
                path: p.to_string(),
                digest: Some(d.to_proto()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}
