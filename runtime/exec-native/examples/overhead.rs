//! Measures the per-action overhead of the native sandbox: runs `true` N times (default
//! 400) with the host toolchain mounted read-only, alternating between the sandbox as wbuild
//! runs it (hardened: capabilities dropped, no_new_privs, seccomp filters, pids cgroup,
//! hidden host directories) and the same sandbox with that confinement switched off, and
//! prints the median (and spread) of each, their difference, and a plain spawn of `true`.
//! With FILES > 0, as a compile action is staged: a scratch tmpfs at `/work` holding FILES
//! input files (read-only bind mounts) and one writable output directory.
//!
//! With BALLAST > 0, this process first holds and touches that many MiB of heap, as wbuild
//! holds its graph and caches mid-build, and each measured run includes writing to every page
//! of it afterwards (`NO_TOUCH=1`: not), which costs a fault per page the sandbox's clone left
//! copy-on-write. `WBUILD_SPAWNER=1` starts sandboxes through the spawner, forked before the
//! ballast is allocated, as a build does.
//!
//! `cargo run --release -p wbuild-exec-native --features bench --example overhead [N] [FILES] [BALLAST]`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use wbuild_exec_native::{NativeRequest, run, set_hardening_for_benchmark};

fn stats(label: &str, mut times: Vec<Duration>) -> Duration {
    times.sort();
    let n = times.len();
    println!(
        "{label:<34} n={n}: min {:>9.1?}  p25 {:>9.1?}  median {:>9.1?}  p75 {:>9.1?}  p90 {:>9.1?}",
        times[0],
        times[n / 4],
        times[n / 2],
        times[n * 3 / 4],
        times[n * 9 / 10],
    );
    times[n / 2]
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(400);
    let files: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    // WBUILD_SPAWNER=1: sandboxes are started by the spawner, forked here first (as the CLI
    // does), not cloned from this process.
    if std::env::var_os("WBUILD_SPAWNER").is_some() {
        wbuild_exec_native::start_spawner().expect("start the spawner");
    }
    // BALLAST (MiB): heap this process holds and touches first, as wbuild holds its graph,
    // caches and store while it builds; a sandbox's clone copies the page tables of it.
    let ballast_mib: usize = std::env::args()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let mut ballast: Vec<Vec<u8>> = (0..ballast_mib).map(|_| vec![1u8; 1 << 20]).collect();
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
        observe: false,
    };
    if let Err(e) = wbuild_exec_native::probe() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let touch = std::env::var_os("NO_TOUCH").is_none();
    let mut one = |hardened: bool| -> Duration {
        set_hardening_for_benchmark(hardened);
        let t = Instant::now();
        let out = run(&req).expect("sandboxed run");
        assert_eq!(out.exit_code, Some(0), "{out:?}");
        // Write to every page of the ballast once, as wbuild goes on writing its heap: each
        // page the clone shared copy-on-write faults.
        if touch {
            for b in ballast.iter_mut() {
                for p in b.iter_mut().step_by(4096) {
                    *p = p.wrapping_add(1);
                }
            }
        }
        t.elapsed()
    };
    // Warm up both (the seccomp filters are compiled once per process).
    one(true);
    one(false);
    let mut on = Vec::with_capacity(n);
    let mut off = Vec::with_capacity(n);
    let mut diff = Vec::with_capacity(n);
    for i in 0..n.max(1) {
        // Alternate the order so neither variant always runs second.
        let (a, b) = if i % 2 == 0 {
            let a = one(true);
            (a, one(false))
        } else {
            let b = one(false);
            (one(true), b)
        };
        on.push(a);
        off.push(b);
        diff.push(a.as_secs_f64() - b.as_secs_f64());
    }
    set_hardening_for_benchmark(true);
    println!("sandboxed `true` with {files} input files:");
    let m_on = stats("  hardened (as wbuild runs it)", on);
    let m_off = stats("  confinement switched off", off);
    diff.sort_by(f64::total_cmp);
    println!(
        "  hardening cost: {:+.1} µs (difference of medians), {:+.1} µs (median of paired differences)",
        m_on.as_secs_f64() * 1e6 - m_off.as_secs_f64() * 1e6,
        diff[diff.len() / 2] * 1e6
    );
    // Baseline: the same program without a sandbox.
    let plain: Vec<Duration> = (0..n.max(1))
        .map(|_| {
            let t = Instant::now();
            std::process::Command::new("true").status().unwrap();
            t.elapsed()
        })
        .collect();
    stats("unsandboxed `true` (Command)", plain);
}
