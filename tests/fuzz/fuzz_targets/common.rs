//! What the fuzz targets share (each target includes this file as a module).

use std::path::{Path, PathBuf};

/// `/dev/shm` when there is one (no disk I/O), else the temp dir.
pub fn scratch() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}
