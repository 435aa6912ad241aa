//! Capturing gcc toolchains from this host's Debian packages, then compiling, linking and
//! running C and C++ programs in a chroot whose root holds only the captured tree.
//!
//! Needs root (for chroot) and the toolchains of tests/setup.sh (gcc, g++, the aarch64
//! cross compilers, qemu-user-static). When they are missing these tests fail; they do
//! not skip.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wbuild_bundle::capture::{CaptureSpec, Captured, PACKAGES_FILE, capture};
use wbuild_bundle::manifest::{FileEntry, Manifest, SCHEMA};
use wbuild_bundle::pack::scan_tree;

const HELLO_C: &str = r#"#include <stdio.h>
#include <string.h>
#include "answer.h"
int main(int argc, char **argv) {
    printf("hello from C: %d %d\n", answer(), strlen(argv[0]) > 0);
    return argc == 1 ? 0 : 3;
}
"#;

const ANSWER_H: &str = "int answer(void);\n";
const ANSWER_C: &str = "#include \"answer.h\"\nint answer(void) { return 42; }\n";

const HELLO_CXX: &str = r#"#include <iostream>
#include <map>
#include <string>
#include <vector>
int main() {
    std::map<std::string, std::vector<int>> m{{"primes", {2, 3, 5, 7}}};
    int sum = 0;
    for (int p : m["primes"]) sum += p;
    std::cout << "hello from C++: " << sum << std::endl;
    try {
        throw std::string("thrown");
    } catch (const std::string &s) {
        std::cout << "caught " << s << std::endl;
    }
}
"#;

/// Fails (does not skip) unless the tests can chroot and the toolchains are installed.
fn require(programs: &[&str]) {
    let uid = Command::new("id").arg("-u").output().expect("run id -u");
    let uid = String::from_utf8_lossy(&uid.stdout).trim().to_owned();
    assert_eq!(
        uid, "0",
        "these tests chroot into the captured toolchain and must run as root"
    );
    for p in programs {
        assert!(
            Path::new("/usr/bin").join(p).exists(),
            "/usr/bin/{p} is missing: run tests/setup.sh"
        );
    }
}

fn do_capture(spec: &CaptureSpec, dest: &Path) -> Captured {
    let start = std::time::Instant::now();
    let c = capture(spec, dest).unwrap_or_else(|e| panic!("capture {}: {e}", spec.target));
    eprintln!(
        "capture {}: {} files, {} bytes ({:.1} MiB), {} packages, in {:.1?}\n  packages: {}\n  \
         excluded dependencies: {:?}\n  extra libraries: {:?}\n  entry points: {:?}\n  env: {:?}",
        spec.target,
        c.files,
        c.bytes,
        c.bytes as f64 / (1024.0 * 1024.0),
        c.packages.len(),
        start.elapsed(),
        c.packages
            .iter()
            .map(|p| p.split(' ').next().unwrap())
            .collect::<Vec<_>>()
            .join(" "),
        c.excluded,
        c.extra_libraries,
        c.entry_points,
        c.env,
    );
    c
}

/// Runs `args` in a chroot into `tree`, with an environment of only PATH.
fn in_chroot(tree: &Path, args: &[&str]) -> Output {
    Command::new("/usr/sbin/chroot")
        .arg(tree)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("run /usr/sbin/chroot")
}

/// Asserts success and returns stdout.
fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn write_sources(tree: &Path) {
    let src = tree.join("tmp/src");
    fs::create_dir_all(&src).unwrap();
    for (name, text) in [
        ("hello.c", HELLO_C),
        ("answer.h", ANSWER_H),
        ("answer.c", ANSWER_C),
        ("hello.cc", HELLO_CXX),
    ] {
        fs::write(src.join(name), text).unwrap();
    }
}

/// Checks the captured tree is a valid bundle: a manifest built from it validates, with
/// every entry point a file of it.
fn check_bundle(tree: &Path, c: &Captured, platform: &str) -> Vec<FileEntry> {
    let (files, _) = scan_tree(tree, None).unwrap();
    assert_eq!(files.len(), c.files, "file count");
    let bytes: u64 = files.iter().filter_map(|f| f.size).sum();
    assert_eq!(bytes, c.bytes, "byte count");
    let m = Manifest {
        schema: SCHEMA.into(),
        name: "gcc".into(),
        version: "12".into(),
        platform: platform.into(),
        entry_points: c.entry_points.clone(),
        env: c.env.clone(),
        files: files.clone(),
    };
    m.validate().unwrap();
    for top in ["bin", "lib", "lib64", "sbin"] {
        let host = fs::read_link(Path::new("/").join(top)).unwrap();
        assert_eq!(fs::read_link(tree.join(top)).unwrap(), host, "/{top}");
    }
    for f in &files {
        assert!(
            !f.path.starts_with("usr/share/doc/")
                && !f.path.starts_with("usr/share/man/")
                && !f.path.starts_with("etc/"),
            "{} should not be captured",
            f.path
        );
    }
    let record = fs::read_to_string(tree.join(PACKAGES_FILE)).unwrap();
    assert_eq!(record.lines().collect::<Vec<_>>(), c.packages);
    files
}

/// Absolute sandbox paths of the x86_64 executables and shared objects in `tree`.
fn x86_64_elves(tree: &Path) -> Vec<String> {
    let (files, _) = scan_tree(tree, None).unwrap();
    files
        .iter()
        .filter(|f| f.symlink.is_none())
        .filter(|f| {
            let mut h = [0u8; 20];
            let ok = fs::File::open(tree.join(&f.path))
                .and_then(|mut r| std::io::Read::read_exact(&mut r, &mut h))
                .is_ok();
            // ELF64, little-endian, ET_EXEC or ET_DYN, x86_64.
            ok && &h[..6] == b"\x7fELF\x02\x01"
                && matches!(h[16], 2 | 3)
                && u16::from_le_bytes([h[18], h[19]]) == 62
        })
        .map(|f| format!("/{}", f.path))
        .collect()
}

/// A uniquely named header in the host's /usr/local/include, removed on drop.
struct HostHeader {
    path: PathBuf,
    created_dir: bool,
}

impl HostHeader {
    fn new() -> HostHeader {
        let dir = Path::new("/usr/local/include");
        let created_dir = !dir.exists();
        fs::create_dir_all(dir).unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = dir.join(format!(
            "wbuild_capture_probe_{}_{nanos}.h",
            std::process::id()
        ));
        fs::write(&path, "#define WBUILD_CAPTURE_PROBE 1\n").unwrap();
        HostHeader { path, created_dir }
    }

    fn name(&self) -> &str {
        self.path.file_name().unwrap().to_str().unwrap()
    }
}

impl Drop for HostHeader {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        if self.created_dir {
            let _ = fs::remove_dir(self.path.parent().unwrap());
        }
    }
}

fn env<'a>(c: &'a Captured, var: &str) -> &'a str {
    c.env
        .get(var)
        .unwrap_or_else(|| panic!("no {var} in {:?}", c.env))
}

#[test]
fn x86_64_toolchain_compiles_links_and_runs_in_a_bare_chroot() {
    require(&["x86_64-linux-gnu-gcc", "x86_64-linux-gnu-g++"]);
    // Written before capturing: the capture must not pick it up.
    let probe = HostHeader::new();
    let spec = CaptureSpec {
        target: "x86_64-linux-gnu".into(),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let c = do_capture(&spec, &tree);

    // Deterministic: a second capture gives the same tree.
    {
        let dir2 = tempfile::tempdir().unwrap();
        let c2 = do_capture(&spec, &dir2.path().join("tree"));
        let a = check_bundle(&tree, &c, "linux-x86_64");
        let b = check_bundle(&dir2.path().join("tree"), &c2, "linux-x86_64");
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, y, "the two captures differ");
        }
        assert_eq!(c.packages, c2.packages);
        assert_eq!(c.entry_points, c2.entry_points);
        assert_eq!(c.env, c2.env);
    }

    let cc = env(&c, "CC");
    let cxx = env(&c, "CXX");
    let ar = env(&c, "AR");
    assert!(cc.starts_with("/usr/bin/x86_64-linux-gnu-gcc-"), "{cc}");
    assert!(cxx.starts_with("/usr/bin/x86_64-linux-gnu-g++-"), "{cxx}");
    assert_eq!(ar, "/usr/bin/x86_64-linux-gnu-ar");
    assert_eq!(env(&c, "TEST_RUNNER"), "");
    assert_eq!(c.entry_points["cc"], cc[1..]);
    assert_eq!(c.entry_points["sh"], "usr/bin/dash");
    assert!(!c.entry_points.contains_key("test_runner"));
    let names: Vec<&str> = c
        .packages
        .iter()
        .map(|p| p.split(' ').next().unwrap())
        .collect();
    for want in [
        "gcc-12",
        "g++-12",
        "cpp-12",
        "binutils-x86-64-linux-gnu",
        "libc6",
        "libc6-dev",
        "libstdc++-12-dev",
        "dash",
        "coreutils",
        "sed",
        "grep",
        "findutils",
        "diffutils",
    ] {
        assert!(names.contains(&want), "{want} not captured: {names:?}");
    }
    assert!(!names.contains(&"perl"), "perl captured: {names:?}");

    // The host header is not in the tree.
    let probe_in_tree = tree.join("usr/local/include").join(probe.name());
    assert!(fs::symlink_metadata(&probe_in_tree).is_err());

    write_sources(&tree);
    // C, with a static library made by the captured ar.
    ok(
        in_chroot(
            &tree,
            &[
                cc,
                "-O2",
                "-c",
                "-o",
                "/tmp/src/answer.o",
                "/tmp/src/answer.c",
            ],
        ),
        "cc -c",
    );
    ok(
        in_chroot(
            &tree,
            &[ar, "rcs", "/tmp/src/libanswer.a", "/tmp/src/answer.o"],
        ),
        "ar",
    );
    ok(
        in_chroot(
            &tree,
            &[
                cc,
                "-O2",
                "-Wall",
                "-o",
                "/tmp/src/hello_c",
                "/tmp/src/hello.c",
                "-L/tmp/src",
                "-lanswer",
            ],
        ),
        "cc",
    );
    let out = ok(in_chroot(&tree, &["/tmp/src/hello_c"]), "run hello_c");
    assert_eq!(out, "hello from C: 42 1\n");
    // C++ (iostream, exceptions: libstdc++ and libgcc_s at run time).
    ok(
        in_chroot(
            &tree,
            &[cxx, "-O2", "-o", "/tmp/src/hello_cxx", "/tmp/src/hello.cc"],
        ),
        "c++",
    );
    let out = ok(in_chroot(&tree, &["/tmp/src/hello_cxx"]), "run hello_cxx");
    assert_eq!(out, "hello from C++: 17\ncaught thrown\n");
    // The shell and utilities build scripts use.
    let out = ok(
        in_chroot(
            &tree,
            &[
                "/bin/sh",
                "-c",
                "cd /tmp/src && ls | sort | grep -c hello && sed -n 's/^int \\(answer\\).*/\\1/p' \
                 answer.c && find . -name '*.a' && diff answer.h answer.h && echo same",
            ],
        ),
        "sh",
    );
    assert_eq!(out, "4\nanswer\n./libanswer.a\nsame\n");

    // Every x86_64 executable and library finds its shared libraries in the chroot (the
    // dynamic loader's own check, independent of the capture's ELF reader).
    let elves: Vec<String> = x86_64_elves(&tree);
    assert!(elves.len() > 100, "only {} ELF files", elves.len());
    let mut args = vec![
        "/bin/sh",
        "-c",
        "for f; do /lib64/ld-linux-x86-64.so.2 --list \"$f\" 2>&1 | grep -qE 'not found|cannot open' \
         && echo \"$f\"; done; true",
        "sh",
    ];
    args.extend(elves.iter().map(String::as_str));
    let out = ok(in_chroot(&tree, &args), "ld.so --list");
    assert_eq!(out, "", "ELF files with missing libraries");

    // A header in the host's /usr/local/include is found on the host, not in the chroot.
    let probe_src = format!(
        "#include <{}>\nint x = WBUILD_CAPTURE_PROBE;\n",
        probe.name()
    );
    let host_src = dir.path().join("probe.c");
    fs::write(&host_src, &probe_src).unwrap();
    let host = Command::new(&c.env["CC"])
        .args(["-fsyntax-only"])
        .arg(&host_src)
        .output()
        .unwrap();
    ok(host, "the probe header on the host");
    fs::write(tree.join("tmp/src/probe.c"), &probe_src).unwrap();
    let out = in_chroot(&tree, &[cc, "-fsyntax-only", "/tmp/src/probe.c"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(probe.name()) && stderr.contains("No such file"),
        "the host's /usr/local/include leaked into the chroot: {}\n{stderr}",
        out.status
    );
    drop(probe);
}

#[test]
fn aarch64_cross_toolchain_compiles_in_a_bare_chroot_and_runs_under_qemu() {
    require(&[
        "aarch64-linux-gnu-gcc",
        "aarch64-linux-gnu-g++",
        "qemu-aarch64-static",
    ]);
    let spec = CaptureSpec {
        target: "aarch64-linux-gnu".into(),
        programs: vec!["qemu-aarch64-static".into()],
        packages: Vec::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let c = do_capture(&spec, &tree);
    let files = check_bundle(&tree, &c, "linux-arm64");

    let runner = env(&c, "TEST_RUNNER");
    assert_eq!(
        runner,
        "/usr/bin/qemu-aarch64-static -L /usr/aarch64-linux-gnu"
    );
    assert_eq!(c.entry_points["test_runner"], "usr/bin/qemu-aarch64-static");
    // Only the one emulator, not the whole qemu-user-static package.
    let qemus: Vec<&str> = files
        .iter()
        .map(|f| f.path.as_str())
        .filter(|p| p.contains("qemu-"))
        .collect();
    assert_eq!(qemus, ["usr/bin/qemu-aarch64-static"]);
    assert!(
        !c.packages
            .iter()
            .any(|p| p.starts_with("qemu-user-static "))
    );
    let cc = env(&c, "CC");
    let cxx = env(&c, "CXX");
    assert!(cc.starts_with("/usr/bin/aarch64-linux-gnu-gcc-"), "{cc}");

    write_sources(&tree);
    ok(
        in_chroot(
            &tree,
            &[
                cc,
                "-O2",
                "-o",
                "/tmp/src/hello_c",
                "/tmp/src/hello.c",
                "/tmp/src/answer.c",
            ],
        ),
        "aarch64 cc",
    );
    ok(
        in_chroot(
            &tree,
            &[cxx, "-O2", "-o", "/tmp/src/hello_cxx", "/tmp/src/hello.cc"],
        ),
        "aarch64 c++",
    );
    for exe in ["hello_c", "hello_cxx"] {
        let bytes = fs::read(tree.join("tmp/src").join(exe)).unwrap();
        assert_eq!(&bytes[..4], b"\x7fELF");
        let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
        assert_eq!(machine, 0xB7, "{exe} is not an aarch64 ELF");
    }
    let run = |exe: &str| {
        let mut args: Vec<&str> = runner.split_whitespace().collect();
        args.push(exe);
        ok(in_chroot(&tree, &args), exe)
    };
    assert_eq!(run("/tmp/src/hello_c"), "hello from C: 42 1\n");
    assert_eq!(
        run("/tmp/src/hello_cxx"),
        "hello from C++: 17\ncaught thrown\n"
    );
}

#[test]
fn errors_name_the_culprit_and_what_to_install() {
    require(&["x86_64-linux-gnu-gcc", "x86_64-linux-gnu-g++"]);
    let dir = tempfile::tempdir().unwrap();
    let err = |spec: CaptureSpec, dest: &Path| -> String {
        match capture(&spec, dest) {
            Ok(_) => panic!("capturing {spec:?} succeeded"),
            Err(e) => e.to_string(),
        }
    };
    let native = |programs: &[&str], packages: &[&str]| CaptureSpec {
        target: "x86_64-linux-gnu".into(),
        programs: programs.iter().map(|s| s.to_string()).collect(),
        packages: packages.iter().map(|s| s.to_string()).collect(),
    };
    let dest = dir.path().join("tree");
    let cases = [
        (
            CaptureSpec {
                target: "x86_64".into(),
                ..Default::default()
            },
            "GNU triple",
        ),
        (
            CaptureSpec {
                target: "wbuildtest-linux-gnu".into(),
                ..Default::default()
            },
            "/usr/bin/wbuildtest-linux-gnu-gcc: not found; apt-get install gcc-wbuildtest-linux-gnu",
        ),
        (
            native(&[], &["wbuild-no-such-package"]),
            "package wbuild-no-such-package: not installed; apt-get install wbuild-no-such-package",
        ),
        (
            native(&["qemu-wbuildtest-static"], &[]),
            "qemu-wbuildtest-static: program not found",
        ),
    ];
    for (spec, want) in cases {
        let e = err(spec, &dest);
        assert!(e.contains(want), "{e}\nshould contain: {want}");
        assert!(!dest.exists(), "a failed capture left {}", dest.display());
    }
    fs::create_dir_all(&dest).unwrap();
    fs::write(dest.join("x"), "").unwrap();
    let e = err(native(&[], &[]), &dest);
    assert!(e.contains("must be empty"), "{e}");
    let r: Result<CaptureSpec, _> = toml::from_str("target = \"x86_64-linux-gnu\"\nprogram = []\n");
    let e = r.expect_err("unknown fields are refused").to_string();
    assert!(e.contains("unknown field"), "{e}");
}
