//! Measures what observing a native action costs: compiles one C file with the host gcc N
//! times (default 60) in the sandbox, alternating observed and unobserved runs, and prints
//! the medians, their difference and the number of system calls the observer answered per
//! compile. ARGV after N replaces the compile command (run by `sh -c` in `/work`, where
//! `main.c` and `include/` are staged).
//!
//! `cargo run --release -p wbuild-exec-native --example observe [N] [COMMAND]`

use std::path::PathBuf;
use std::time::Duration;

use wbuild_exec_native::{Mount, NativeRequest, run};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(60);
    let cmd = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "gcc -O2 -Iinclude -c main.c -o out/main.o -MD -MF out/main.d".into());
    let ws = tempfile::tempdir().expect("temp dir");
    let inc = ws.path().join("include");
    std::fs::create_dir_all(&inc).unwrap();
    let mut src = String::from("#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n");
    for i in 0..8 {
        std::fs::write(
            inc.join(format!("h{i}.h")),
            format!("static inline int f{i}(int x) {{ return x * {i} + 1; }}\n"),
        )
        .unwrap();
        src.push_str(&format!("#include \"h{i}.h\"\n"));
    }
    src.push_str(
        "int main(int c, char **v) { printf(\"%d %s\\n\", f1(c) + f7(c), v[0]); return 0; }\n",
    );
    std::fs::write(ws.path().join("main.c"), src).unwrap();
    let out = ws.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut mounts = wbuild_exec_native::host_toolchain_mounts();
    for (host, sandbox) in [("main.c", "/work/main.c"), ("include", "/work/include")] {
        mounts.push(Mount {
            host: ws.path().join(host),
            sandbox: sandbox.into(),
            writable: false,
        });
    }
    mounts.push(Mount {
        host: out,
        sandbox: "/work/out".into(),
        writable: true,
    });
    let mut req = NativeRequest {
        argv: vec!["sh".into(), "-c".into(), cmd.clone()],
        env: Vec::new(),
        mounts,
        scratch: vec![PathBuf::from("/work")],
        cwd: PathBuf::from("/work"),
        source_date_epoch: 0,
        timeout: Duration::from_secs(60),
        observe: false,
    };
    let mut one = |observe: bool| {
        req.observe = observe;
        let o = run(&req).expect("sandboxed run");
        assert_eq!(
            o.exit_code,
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        (o.duration, o.observed)
    };
    one(true);
    one(false);
    let (mut on, mut off, mut calls, mut paths, mut shared) = (Vec::new(), Vec::new(), 0, 0, 0);
    for i in 0..n.max(1) {
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for observe in order {
            let (d, obs) = one(observe);
            if let Some(obs) = obs {
                calls = obs.notifications;
                paths = obs.accesses.len();
                shared = obs.shared_lookups;
                on.push(d);
            } else {
                off.push(d);
            }
        }
    }
    let (a, b) = (median(on), median(off));
    println!("`{cmd}` in the sandbox, {n} runs each:");
    println!("  unobserved  median {b:>9.2?}");
    println!(
        "  observed    median {a:>9.2?}  ({calls} calls answered, {paths} distinct accesses, \
         {shared} lookups from the shared table)"
    );
    println!(
        "  cost {:+.2} ms ({:+.1}%), {:.1} µs per answered call",
        (a.as_secs_f64() - b.as_secs_f64()) * 1e3,
        (a.as_secs_f64() / b.as_secs_f64() - 1.0) * 100.0,
        (a.as_secs_f64() - b.as_secs_f64()) * 1e6 / calls.max(1) as f64
    );
}
