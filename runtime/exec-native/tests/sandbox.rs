//! Integration tests for the native sandbox. They need user namespaces (CI runs them as
//! root on Linux).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use wbuild_exec_native::{Mount, NativeOutcome, NativeRequest, SandboxError, probe, run};

/// Host toolchain directories that exist here (symlinks such as Debian's /bin -> usr/bin
/// are recreated as symlinks).
fn toolchain() -> Vec<Mount> {
    wbuild_exec_native::host_toolchain_mounts()
}

fn req(argv: &[&str]) -> NativeRequest {
    NativeRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        mounts: toolchain(),
        scratch: Vec::new(),
        cwd: PathBuf::from("/"),
        source_date_epoch: 1_700_000_000,
        timeout: Duration::from_secs(30),
        observe: false,
    }
}

fn sh(script: &str) -> NativeRequest {
    req(&["sh", "-c", script])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &NativeOutcome) {
    assert_eq!(
        out.exit_code,
        Some(0),
        "stdout: {}\nstderr: {}\n{out:?}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn probe_succeeds() {
    probe().unwrap();
}

#[test]
fn echo_is_captured() {
    let out = run(&req(&["echo", "hi"])).unwrap();
    ok(&out);
    assert_eq!(out.stdout, b"hi\n");
    assert!(out.stderr.is_empty());
    assert!(!out.timed_out);
    assert_eq!(out.signal, None);
}

#[test]
fn stderr_is_captured_separately() {
    let out = run(&sh("echo out; echo err >&2")).unwrap();
    ok(&out);
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
}

#[test]
fn exit_codes_and_signals() {
    let out = run(&sh("exit 3")).unwrap();
    assert_eq!(out.exit_code, Some(3));
    assert_eq!(out.signal, None);
    let out = run(&req(&["false"])).unwrap();
    assert_eq!(out.exit_code, Some(1));
    let out = run(&sh("kill -TERM $$")).unwrap();
    assert_eq!(out.exit_code, None);
    assert_eq!(out.signal, Some(libc::SIGTERM));
}

#[test]
fn env_is_exactly_declared_plus_fixed() {
    let mut r = req(&["env"]);
    r.env = vec![
        ("FOO".into(), "bar baz".into()),
        ("CC".into(), "gcc".into()),
    ];
    let out = run(&r).unwrap();
    ok(&out);
    let mut lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "CC=gcc",
            "FOO=bar baz",
            "LANG=C",
            "PATH=/usr/bin:/bin",
            "SOURCE_DATE_EPOCH=1700000000",
            "TZ=UTC",
        ]
    );
}

#[test]
fn declared_path_is_used() {
    let mut r = req(&["sh", "-c", "echo $PATH"]);
    r.env = vec![("PATH".into(), "/bin".into())];
    let out = run(&r).unwrap();
    ok(&out);
    assert_eq!(out.stdout, b"/bin\n");
}

#[test]
fn fixed_variables_cannot_be_overridden() {
    let mut r = req(&["true"]);
    r.env = vec![("LANG".into(), "de_DE.UTF-8".into())];
    let e = run(&r).unwrap_err();
    assert!(matches!(e, SandboxError::InvalidRequest(_)), "{e}");
    assert!(e.to_string().contains("LANG"), "{e}");
}

#[test]
fn identity_umask_hostname() {
    let out = run(&sh(
        "id -u; id -g; umask; hostname; echo $$; echo ${HOME:-nohome}",
    ))
    .unwrap();
    ok(&out);
    // The shell is the action, pid 2 (init is pid 1).
    assert_eq!(text(&out.stdout), "0\n0\n0022\nwbuild\n2\nnohome\n");
}

#[test]
fn host_paths_not_mounted_do_not_exist() {
    let host_tmp = tempfile::Builder::new()
        .prefix("wbuild-native-test-")
        .tempfile_in("/tmp")
        .unwrap();
    let host_file = host_tmp.path().to_str().unwrap().to_owned();
    let script = format!(
        "for p in /home /root /etc/passwd /etc/shadow /etc/hosts /var /work /sys {host_file}; do \
           if [ -e $p ]; then echo \"present $p\"; fi; done; \
         ls -A /tmp; ls -A /dev | tr '\\n' ' '; echo; ls -A / | tr '\\n' ' '; echo; \
         ls -A /etc | tr '\\n' ' '"
    );
    let out = run(&sh(&script)).unwrap();
    ok(&out);
    let s = text(&out.stdout);
    assert!(!s.contains("present"), "{s}");
    let lines: Vec<&str> = s.lines().collect();
    // /tmp is empty; /dev has only the allowed nodes and links.
    assert_eq!(lines[0], "fd null stderr stdin stdout urandom zero ", "{s}");
    let mut root: Vec<&str> = lines[1].split_whitespace().collect();
    root.sort();
    let mut want: Vec<String> = ["dev", "proc", "tmp"].map(String::from).to_vec();
    for m in toolchain() {
        let top = m
            .sandbox
            .iter()
            .nth(1)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if !want.contains(&top) {
            want.push(top);
        }
    }
    want.sort();
    assert_eq!(root, want, "{s}");
    // Of the host's /etc, only the dynamic linker's cache (when the host has one).
    let etc = lines.get(2).copied().unwrap_or("").trim();
    if std::path::Path::new(wbuild_exec_native::LD_SO_CACHE).exists() {
        assert_eq!(etc, "ld.so.cache", "{s}");
    }
}

#[test]
fn etc_present_only_when_mounted() {
    let mut r = sh("head -n1 /etc/passwd");
    r.mounts.push(Mount {
        host: "/etc".into(),
        sandbox: "/etc".into(),
        writable: false,
    });
    let out = run(&r).unwrap();
    ok(&out);
    assert!(text(&out.stdout).starts_with("root:"));
}

#[test]
fn toolchain_symlinks_are_recreated() {
    // A mount whose host path is a symlink (as Debian's `/bin -> usr/bin`) appears as the
    // same symlink, not as what it points to.
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("tools");
    std::os::unix::fs::symlink("usr/bin", &link).unwrap();
    let mut r = sh("readlink /tools; test -L /tools && echo is-a-link; ls /tools/sh");
    r.mounts.push(Mount {
        host: link,
        sandbox: "/tools".into(),
        writable: false,
    });
    let out = run(&r).unwrap();
    ok(&out);
    assert_eq!(text(&out.stdout), "usr/bin\nis-a-link\n/tools/sh\n");
}

#[test]
fn input_read_only_output_writable() {
    let inputs = tempfile::tempdir().unwrap();
    let outputs = tempfile::tempdir().unwrap();
    std::fs::write(inputs.path().join("a.txt"), "input\n").unwrap();
    std::fs::create_dir(inputs.path().join("out")).unwrap();
    let mut r = sh("cat a.txt; \
         if echo x > a.txt 2>/dev/null; then echo WROTE-INPUT; fi; \
         if touch new 2>/dev/null; then echo CREATED-IN-INPUT; fi; \
         if touch /newroot 2>/dev/null; then echo WROTE-ROOT; fi; \
         echo result > out/r.txt && mkdir -p out/d && echo deep > out/d/x; \
         echo tmp > /tmp/t && cat /tmp/t");
    r.cwd = "/work".into();
    r.mounts.push(Mount {
        host: inputs.path().into(),
        sandbox: "/work".into(),
        writable: false,
    });
    r.mounts.push(Mount {
        host: outputs.path().into(),
        sandbox: "/work/out".into(),
        writable: true,
    });
    let out = run(&r).unwrap();
    ok(&out);
    assert_eq!(text(&out.stdout), "input\ntmp\n");
    assert_eq!(
        std::fs::read_to_string(inputs.path().join("a.txt")).unwrap(),
        "input\n"
    );
    assert!(!inputs.path().join("new").exists());
    assert_eq!(
        std::fs::read_to_string(outputs.path().join("r.txt")).unwrap(),
        "result\n"
    );
    let meta = std::fs::metadata(outputs.path().join("r.txt")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o644, "umask 022");
    assert_eq!(
        std::fs::read_to_string(outputs.path().join("d/x")).unwrap(),
        "deep\n"
    );
}

#[test]
fn scratch_tmpfs_holds_file_mounts_and_vanishes() {
    let blobs = tempfile::tempdir().unwrap();
    let outputs = tempfile::tempdir().unwrap();
    let blob = blobs.path().join("blob");
    std::fs::write(&blob, "header\n").unwrap();
    let mut r = sh("cat lib/inc/a.h; \
         if echo x > lib/inc/a.h 2>/dev/null; then echo WROTE-INPUT; fi; \
         if rm -f lib/inc/a.h 2>/dev/null && ! test -e lib/inc/a.h; then echo REMOVED-INPUT; fi; \
         echo scratch > lib/tmp.txt && cat lib/tmp.txt; \
         echo obj > lib/_objs/a.o");
    r.cwd = "/work".into();
    r.scratch.push("/work".into());
    r.mounts.push(Mount {
        host: blob.clone(),
        sandbox: "/work/lib/inc/a.h".into(),
        writable: false,
    });
    r.mounts.push(Mount {
        host: outputs.path().into(),
        sandbox: "/work/lib/_objs".into(),
        writable: true,
    });
    let out = run(&r).unwrap();
    ok(&out);
    assert_eq!(text(&out.stdout), "header\nscratch\n");
    assert_eq!(std::fs::read_to_string(&blob).unwrap(), "header\n");
    // Only the output directory reached the host; no mount point was made outside scratch.
    assert_eq!(
        std::fs::read_to_string(outputs.path().join("a.o")).unwrap(),
        "obj\n"
    );
    assert_eq!(std::fs::read_dir(outputs.path()).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(blobs.path()).unwrap().count(), 1);
    // A scratch directory inside a read-only mount, or on a mount point, is refused.
    for (writable, at) in [(false, "/work/s"), (true, "/work")] {
        let mut bad = req(&["true"]);
        bad.mounts.push(Mount {
            host: outputs.path().into(),
            sandbox: "/work".into(),
            writable,
        });
        bad.scratch.push(at.into());
        let e = run(&bad).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "scratch directory {at} lies inside the mount /work"
            )),
            "{e}"
        );
    }
}

/// An archive's view: its output directory is a writable host directory, the objects it reads
/// lie in a subdirectory of it holding no output. That subdirectory is a scratch tmpfs inside
/// the writable mount: the inputs' mount points are made on it, and of it the host directory
/// gets only the directory it is mounted on.
#[test]
fn scratch_inside_a_writable_mount_keeps_input_mount_points_off_the_host() {
    let blobs = tempfile::tempdir().unwrap();
    let outputs = tempfile::tempdir().unwrap();
    let mut r = sh("cat lib/_objs/lib/a.o lib/_objs/lib/b.o > lib/liblib.a; \
         echo junk > lib/_objs/junk; \
         if echo x > lib/_objs/lib/a.o 2>/dev/null; then echo WROTE-INPUT; fi; \
         ls lib/_objs/lib");
    r.cwd = "/work".into();
    r.scratch.push("/work".into());
    r.scratch.push("/work/lib/_objs".into());
    for name in ["a.o", "b.o"] {
        let blob = blobs.path().join(name);
        std::fs::write(&blob, format!("{name}\n")).unwrap();
        r.mounts.push(Mount {
            host: blob,
            sandbox: format!("/work/lib/_objs/lib/{name}").into(),
            writable: false,
        });
    }
    r.mounts.push(Mount {
        host: outputs.path().into(),
        sandbox: "/work/lib".into(),
        writable: true,
    });
    let out = run(&r).unwrap();
    ok(&out);
    assert_eq!(text(&out.stdout), "a.o\nb.o\n");
    assert_eq!(
        std::fs::read_to_string(outputs.path().join("liblib.a")).unwrap(),
        "a.o\nb.o\n"
    );
    let mut host: Vec<String> = walk(outputs.path());
    host.sort();
    assert_eq!(host, ["_objs/", "liblib.a"], "the host directory holds");
    assert_eq!(
        std::fs::read_to_string(blobs.path().join("a.o")).unwrap(),
        "a.o\n"
    );
}

/// Every path under `dir`, relative, directories with a trailing `/`.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_dir() {
            out.push(format!("{name}/"));
            out.extend(walk(&e.path()).into_iter().map(|p| format!("{name}/{p}")));
        } else {
            out.push(name);
        }
    }
    out
}

#[test]
fn single_file_mount() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("tool.sh");
    std::fs::write(&f, "echo from-file-mount\n").unwrap();
    let mut r = req(&["sh", "/opt/tool.sh"]);
    r.mounts.push(Mount {
        host: f,
        sandbox: "/opt/tool.sh".into(),
        writable: false,
    });
    let out = run(&r).unwrap();
    ok(&out);
    assert_eq!(out.stdout, b"from-file-mount\n");
}

#[test]
fn no_network_even_to_loopback() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // bash's /dev/tcp does a plain connect(); fall back to python if bash is missing.
    let script = format!(
        "if command -v bash >/dev/null; then \
           if bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' 2>/dev/null; then echo CONNECTED; \
           else echo refused; fi; \
         else echo nobash; fi"
    );
    let out = run(&sh(&script)).unwrap();
    ok(&out);
    let s = text(&out.stdout);
    assert!(!s.contains("CONNECTED"), "{s}");
    // Make sure the check actually ran a connect (bash is on every CI image we use).
    assert_eq!(s.trim(), "refused", "{s}");
    // And the host listener is really reachable from outside the sandbox.
    std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
}

#[test]
fn timeout_kills_the_whole_tree() {
    // An unusual duration so the check below finds only this test's processes.
    let marker = format!("100.{}", std::process::id());
    let mut r = sh(&format!("sleep {marker} & sleep {marker}"));
    r.timeout = Duration::from_millis(500);
    let start = Instant::now();
    let out = run(&r).unwrap();
    let took = start.elapsed();
    assert!(out.timed_out, "{out:?}");
    assert_eq!(out.exit_code, None);
    assert_eq!(out.signal, Some(libc::SIGKILL));
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    // Neither sleep survived (the pid namespace was torn down with its init).
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&format!("sleep {marker}")))
        .collect();
    assert!(survivors.is_empty(), "{survivors:?}");
}

#[test]
fn background_children_do_not_outlive_the_action() {
    // The action exits at once but leaves a child holding stdout; init's exit tears down
    // the pid namespace, so run() returns promptly.
    let mut r = sh("sleep 100 & echo started");
    r.timeout = Duration::from_secs(20);
    let start = Instant::now();
    let out = run(&r).unwrap();
    ok(&out);
    assert_eq!(out.stdout, b"started\n");
    assert!(!out.timed_out);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn processes_see_only_their_namespace() {
    let out = run(&sh("ls /proc | grep -c '^[0-9]'")).unwrap();
    ok(&out);
    // init, sh, ls, grep
    let n: u32 = text(&out.stdout).trim().parse().unwrap();
    assert!(n <= 4, "{n} processes visible");
}

#[test]
fn dev_nodes_work() {
    let out = run(&sh(
        "echo x > /dev/null && head -c 4 /dev/zero | wc -c && head -c 8 /dev/urandom | wc -c",
    ))
    .unwrap();
    ok(&out);
    assert_eq!(
        text(&out.stdout).split_whitespace().collect::<Vec<_>>(),
        ["4", "8"]
    );
}

#[test]
fn missing_program_is_a_clear_error() {
    let e = run(&req(&["no-such-tool-xyz"])).unwrap_err();
    assert!(matches!(e, SandboxError::Exec { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("no-such-tool-xyz") && msg.contains("PATH"),
        "{msg}"
    );
}

#[test]
fn missing_cwd_is_a_clear_error() {
    let mut r = req(&["true"]);
    r.cwd = "/nonexistent".into();
    let e = run(&r).unwrap_err();
    assert!(matches!(e, SandboxError::Cwd { .. }), "{e}");
}

#[test]
fn missing_mount_source_is_a_clear_error() {
    let mut r = req(&["true"]);
    r.mounts.push(Mount {
        host: "/definitely/not/here".into(),
        sandbox: "/work".into(),
        writable: false,
    });
    let e = run(&r).unwrap_err();
    assert!(matches!(e, SandboxError::MountSource { .. }), "{e}");
    assert!(e.to_string().contains("/definitely/not/here"), "{e}");
}

#[test]
fn reserved_and_relative_mount_points_are_rejected() {
    for p in ["/tmp", "/proc/x", "/dev", "/", "work", "/a/../b"] {
        let mut r = req(&["true"]);
        r.mounts.push(Mount {
            host: "/usr".into(),
            sandbox: p.into(),
            writable: false,
        });
        let e = run(&r).unwrap_err();
        assert!(matches!(e, SandboxError::InvalidRequest(_)), "{p}: {e}");
    }
}

#[test]
fn nested_mount_point_missing_in_read_only_parent_fails_cleanly() {
    let inputs = tempfile::tempdir().unwrap();
    let outputs = tempfile::tempdir().unwrap();
    let mut r = req(&["true"]);
    r.mounts.push(Mount {
        host: inputs.path().into(),
        sandbox: "/work".into(),
        writable: false,
    });
    r.mounts.push(Mount {
        host: outputs.path().into(),
        sandbox: "/work/out".into(),
        writable: true,
    });
    let e = run(&r).unwrap_err();
    assert!(matches!(e, SandboxError::Setup { .. }), "{e}");
    assert!(e.to_string().contains("/work/out"), "{e}");
    // Nothing was created in the read-only source.
    assert!(!inputs.path().join("out").exists());
}

#[test]
fn output_is_capped() {
    let out = run(&sh("head -c 20000000 /dev/zero")).unwrap();
    ok(&out);
    assert_eq!(out.stdout.len(), wbuild_exec_native::OUTPUT_CAP);
}

#[test]
fn many_concurrent_runs() {
    let handles: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                for j in 0..5 {
                    let out = run(&sh(&format!("echo {i}-{j}"))).unwrap();
                    ok(&out);
                    assert_eq!(text(&out.stdout), format!("{i}-{j}\n"));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
