//! Measures the per-action overhead of the native sandbox: runs `true` N times (default
//! 200) with the host toolchain mounted read-only and prints timing percentiles; with
//! FILES > 0, as a compile action is staged: a scratch tmpfs at `/work` holding FILES input
//! files (read-only bind mounts) and one writable output directory.
//!
//! `cargo run --release -p wbuild-exec-native --example overhead [N] [FILES]`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use wbuild_exec_native::{NativeRequest, run};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let files: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let staged = tempfile::tempdir().expect("temp dir");
    let mut mounts = wbuild_exec_native::host_toolchain_mounts();
    let mut scratch = Vec::new();
    if files > 0 {
        scratch.push(PathBuf::from("/work"));
        let out = staged.path().join("out");
        std::fs::create_dir(&out).unwrap();
        mounts.push(wbuild_exec_native::Mount {
            host: out,
            sandbox: "/work/pkg/_objs".into(),
            writable: true,
        });
        for i in 0..files {
            let f = staged.path().join(format!("in{i}"));
            std::fs::write(&f, format!("{i}\n")).unwrap();
            mounts.push(wbuild_exec_native::Mount {
                host: f,
                sandbox: format!("/work/pkg/include/h{i}.h").into(),
                writable: false,
            });
        }
    }
    let req = NativeRequest {
        argv: vec!["true".into()],
        env: Vec::new(),
        mounts,
        scratch,
        cwd: PathBuf::from("/"),
        source_date_epoch: 0,
        timeout: Duration::from_secs(10),
    };
    if let Err(e) = wbuild_exec_native::probe() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let wall = Instant::now();
    let mut times: Vec<Duration> = (0..n.max(1))
        .map(|_| {
            let out = run(&req).expect("sandboxed run");
            assert_eq!(out.exit_code, Some(0), "{out:?}");
            out.duration
        })
        .collect();
    let wall = wall.elapsed();
    times.sort();
    let n = times.len();
    println!(
        "sandboxed `true` with {files} input files, {n} runs: min {:?}, median {:?}, p90 {:?}, max {:?}; {:?}/run wall",
        times[0],
        times[n / 2],
        times[n * 9 / 10],
        times[n - 1],
        wall / n as u32
    );
    // Baseline: the same program without a sandbox.
    let t = Instant::now();
    for _ in 0..n {
        std::process::Command::new("true").status().unwrap();
    }
    println!(
        "unsandboxed `true` via std::process::Command: {:?}/run",
        t.elapsed() / n as u32
    );
}
