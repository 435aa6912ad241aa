//! Support for wbuild's end-to-end tests (the tests themselves are in `tests/e2e/`): the WASI
//! guest programs and tools compiled from source by this crate's build script, and a
//! `TestCommand`-style harness that runs the real `wbuild` binary in temporary workspaces and
//! prints the command, its output and the workspace listing when something fails.

use std::path::{Path, PathBuf};

/// Directory holding `<name>.wasm` for every guest and tool built by build.rs.
pub fn guest_dir() -> PathBuf {
    PathBuf::from(env!("WBUILD_GUEST_DIR"))
}

/// Path of one compiled guest, e.g. `guest("probe")`, `guest("wb-tar")`.
pub fn guest(name: &str) -> PathBuf {
    let p = guest_dir().join(format!("{name}.wasm"));
    assert!(p.is_file(), "guest {} was not built", p.display());
    p
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}
