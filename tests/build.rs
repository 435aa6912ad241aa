//! Compiles the WASI guest programs used by the end-to-end tests (tests/guests/*) and the
//! tools in toolchains/wasi-tools/* to `wasm32-wasip1`, from source, with a nested cargo in
//! its own target directory.

use std::path::{Path, PathBuf};
use std::process::Command;

const GUESTS: &[&str] = &["wbuild-guest-probe", "wb-template", "wb-tar", "wb-check"];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let target_dir = out.join("wasm-target");
    for dir in ["tests/guests", "toolchains/wasi-tools", "sdk"] {
        rerun_tree(&root.join(dir));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "--target", "wasm32-wasip1"])
        .arg("--target-dir")
        .arg(&target_dir);
    for g in GUESTS {
        cmd.args(["-p", g]);
    }
    // Flags meant for the host build must not leak into the guest build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("run cargo for the wasm32-wasip1 guests");
    if !status.success() {
        panic!(
            "building the WASI guests failed; is the target installed? (`rustup target add wasm32-wasip1`)"
        );
    }
    let bin = target_dir.join("wasm32-wasip1").join("release");
    println!("cargo:rustc-env=WBUILD_GUEST_DIR={}", bin.display());
}

fn rerun_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "target" {
            continue;
        }
        if p.is_dir() {
            rerun_tree(&p);
        } else {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}
