//! Reliability: a build killed with SIGKILL at random moments, a hundred times over clean,
//! cached and incremental builds, never leaves a store that `cache verify` finds
//! inconsistent, and the next build always gives the reference outputs; several builds on
//! one cache and workspace at once all finish with the right outputs.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use wbuild_tests::{TestWorkspace, stdout};

use super::{c_project, walk_files, ws};

/// WASI actions of different lengths (a chain and independent ones) plus the C project
/// (native compiles, an archive, a link). `version` changes one source of each kind.
fn crash_workspace(w: &TestWorkspace, version: u32) {
    let mut build = String::new();
    for i in 0..12 {
        build.push_str(&format!(
            "wasi_run(name = \"s{i}\", tool = \"//tools:probe\", srcs = [], outs = [\"s{i}.txt\"], \
             args = [\"spin\", \"{}\", \"$@\"])\n",
            2_000_000 * (1 + i % 4) + i
        ));
    }
    build.push_str(
        "wasi_run(name = \"cat\", tool = \"//tools:probe\", srcs = [\"in.txt\", \":s1\"], \
         outs = [\"cat.txt\"], args = [\"concat\", \"$@\", \"$(location in.txt)\", \"$(location :s1)\"])\n",
    );
    w.write("k/WBUILD", &build);
    w.write("k/in.txt", &format!("version {version}\n"));
    c_project(w);
    w.write(
        "app/main.c",
        &format!(
            "#include <stdio.h>\n#include \"greet/greet.h\"\nint main(void) {{ printf(\"%s %d v{version}\\n\", greeting(), add(2, 3)); return 0; }}\n"
        ),
    );
}

/// Every file under wbuild-out, by relative path.
fn outputs(w: &TestWorkspace) -> BTreeMap<String, Vec<u8>> {
    let base = w.path("wbuild-out");
    walk_files(&base)
        .into_iter()
        .map(|p| {
            (
                p.strip_prefix(&base).unwrap().display().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// `cache verify` finds nothing to repair.
fn assert_consistent(w: &TestWorkspace) {
    let out = w.ok(&["cache", "verify"]);
    assert!(
        stdout(&out).contains("cache is consistent"),
        "{}",
        stdout(&out)
    );
}

/// xorshift64*: a reproducible sequence from the printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn kill_9_at_a_hundred_random_moments_never_corrupts_the_store() {
    const TARGETS: &[&str] = &["build", "-j", "2", "//k/...", "//app:hello"];
    // Reference outputs of both source versions, each from a fresh cache; and how long a
    // clean, a cached and an incremental build take, to spread the kills over each.
    let mut reference = Vec::new();
    let mut took = [Duration::ZERO; 3];
    for version in [0, 1] {
        let r = ws();
        crash_workspace(&r, version);
        let t = Instant::now();
        r.ok(TARGETS);
        took[0] = took[0].max(t.elapsed());
        reference.push(outputs(&r));
        std::fs::remove_dir_all(r.path("wbuild-out")).unwrap();
        let t = Instant::now();
        r.ok(TARGETS);
        took[1] = took[1].max(t.elapsed());
        crash_workspace(&r, 1 - version);
        let t = Instant::now();
        r.ok(TARGETS);
        took[2] = took[2].max(t.elapsed());
    }
    eprintln!("clean, cached, incremental builds take {took:?}");
    assert!(reference[0].len() >= 14, "{:?}", reference[0].keys());

    let seed = std::env::var("WBUILD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash loop seed {seed} (rerun with WBUILD_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let w = ws();
    let mut version = 0;
    crash_workspace(&w, version);
    let mut killed_mid_build = 0;
    for round in 0..100 {
        // Clean (empty cache), cached (outputs deleted) or incremental (a source edited).
        let scenario = rng.next() % 3;
        match scenario {
            0 => {
                let _ = std::fs::remove_dir_all(&w.cache);
                let _ = std::fs::remove_dir_all(w.path("wbuild-out"));
            }
            1 => {
                let _ = std::fs::remove_dir_all(w.path("wbuild-out"));
            }
            _ => {
                version = 1 - version;
                crash_workspace(&w, version);
            }
        }
        let window = took[scenario as usize].as_micros() as u64 + 1;
        let delay = Duration::from_micros(rng.next() % window);
        let mut child = w
            .cmd(TARGETS)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait out the delay, noticing a build that finishes first: the reference builds ran
        // in other states of the cache (and with other tests running), so a scenario's window
        // becomes the duration its builds are seen to take here.
        let start = Instant::now();
        let mut finished_after = None;
        while start.elapsed() < delay {
            if child.try_wait().unwrap().is_some() {
                finished_after = Some(start.elapsed());
                break;
            }
            std::thread::sleep(
                Duration::from_micros(500).min(delay.saturating_sub(start.elapsed())),
            );
        }
        match finished_after {
            Some(d) => took[scenario as usize] = d,
            None if child.try_wait().unwrap().is_none() => killed_mid_build += 1,
            None => {}
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let out = w.run(&["cache", "verify"]);
        assert!(
            out.status.success() && !stdout(&out).contains("corrupt"),
            "round {round} (scenario {scenario}, kill after {delay:?}, seed {seed}): cache verify:\n{}",
            w.report(&["cache", "verify"], &out)
        );
        w.ok(TARGETS);
        let got = outputs(&w);
        let want = &reference[version as usize];
        for (path, bytes) in want {
            assert!(
                got.get(path) == Some(bytes),
                "round {round} (scenario {scenario}, kill after {delay:?}, seed {seed}): \
                 {path} differs from the reference build"
            );
        }
    }
    eprintln!("{killed_mid_build} of 100 kills landed while the build was running");
    assert!(
        killed_mid_build >= 50,
        "only {killed_mid_build} kills hit a running build"
    );
}

#[test]
fn two_and_four_builds_at_once_on_one_cache_and_workspace() {
    for n in [2, 4] {
        let w = ws();
        crash_workspace(&w, 0);
        let r = ws();
        crash_workspace(&r, 0);
        r.ok(&["build", "//k/...", "//app:hello"]);
        let want = outputs(&r);
        let children: Vec<_> = (0..n)
            .map(|_| {
                w.cmd(&["build", "-j", "2", "//k/...", "//app:hello"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", w.report(&["build"], &out));
        }
        assert_eq!(outputs(&w), want, "{n} concurrent builds");
        w.ok(&["cache", "verify"]);
    }
}

#[test]
fn flipped_bytes_in_the_index_never_give_a_wrong_output() {
    const TARGETS: &[&str] = &["build", "//k/...", "//app:hello"];
    let r = ws();
    crash_workspace(&r, 0);
    r.ok(TARGETS);
    let want = outputs(&r);

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("index corruption seed {seed}");
    let mut rng = Rng(seed);
    let w = ws();
    crash_workspace(&w, 0);
    let mut failed_clearly = 0;
    for round in 0..12 {
        w.ok(TARGETS);
        let index = w.cache.join("index.redb");
        let mut bytes = std::fs::read(&index).unwrap();
        for _ in 0..16 {
            let i = (rng.next() % bytes.len() as u64) as usize;
            bytes[i] ^= 1 << (rng.next() % 8);
        }
        std::fs::write(&index, bytes).unwrap();
        let _ = std::fs::remove_dir_all(w.path("wbuild-out"));
        let out = w.run(TARGETS);
        let text = format!("{}{}", stdout(&out), wbuild_tests::stderr(&out));
        if out.status.success() {
            assert_eq!(
                outputs(&w),
                want,
                "round {round} (seed {seed}): wrong outputs\n{text}"
            );
        } else {
            // Damage redb only finds while reading is reported as such, not as a crash...
            assert!(
                text.contains("cache index") && text.contains("damaged"),
                "round {round} (seed {seed}): unclear failure:\n{text}"
            );
            assert!(!text.contains("panicked"), "{text}");
            failed_clearly += 1;
            // ...and the next command repairs it.
            w.ok(TARGETS);
            assert_eq!(outputs(&w), want, "round {round} (seed {seed})");
        }
    }
    let replaced = std::fs::read_dir(&w.cache)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().contains(".redb.broken-"))
        })
        .count();
    eprintln!(
        "{failed_clearly} of 12 rounds stopped with the damaged-index message; the index was \
         replaced {replaced} times"
    );
    w.run(&["cache", "verify"]);
    assert_consistent(&w);
}

/// A mount made for one test, undone (lazily, so an open file cannot keep it) when dropped.
struct Mount(std::path::PathBuf);

impl Mount {
    fn run(args: &[&str]) {
        let out = std::process::Command::new("mount")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount {}: {} (these tests need root, as in CI)",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `dir` itself, bind-mounted read-only.
    fn read_only(dir: &std::path::Path) -> Mount {
        let d = dir.to_str().unwrap();
        Mount::run(&["--bind", d, d]);
        let m = Mount(dir.to_path_buf());
        Mount::run(&["-o", "remount,bind,ro", d]);
        m
    }

    /// A tmpfs of `size` (e.g. "4m") on `dir`.
    fn tmpfs(dir: &std::path::Path, size: &str) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        Mount::run(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            dir.to_str().unwrap(),
        ]);
        Mount(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        Mount::run(&[
            "-o",
            &format!("remount,size={size}"),
            self.0.to_str().unwrap(),
        ]);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_read_only_cache_directory_fails_clearly_and_loses_nothing() {
    const TARGETS: &[&str] = &["build", "//k/...", "//app:hello"];
    let w = ws();
    crash_workspace(&w, 0);
    w.ok(TARGETS);
    let want = outputs(&w);
    crash_workspace(&w, 1); // something to build, so the cache must be written
    {
        let _ro = Mount::read_only(&w.cache);
        let out = w.fail(TARGETS);
        let text = wbuild_tests::stderr(&out);
        assert!(
            text.contains("the cache directory must be writable")
                && text.contains("--cache-dir")
                && text.contains(w.cache.to_str().unwrap()),
            "{}",
            w.report(TARGETS, &out)
        );
        assert!(
            !text.contains("panicked") && !text.contains("delete that file"),
            "{text}"
        );
        // Reading commands still work on a read-only cache... or say the same clearly.
        let out = w.run(&["cache", "stats"]);
        let text = format!("{}{}", stdout(&out), wbuild_tests::stderr(&out));
        assert!(
            out.status.success() || text.contains("must be writable"),
            "{text}"
        );
    }
    // A cache directory that cannot even be created.
    let ro_parent = w.root.join("../ro-parent");
    std::fs::create_dir_all(&ro_parent).unwrap();
    {
        let _ro = Mount::read_only(&ro_parent);
        let cache = ro_parent.join("cache");
        let out = w
            .cmd(TARGETS)
            .arg("--cache-dir")
            .arg(&cache)
            .output()
            .unwrap();
        let text = wbuild_tests::stderr(&out);
        assert!(!out.status.success(), "{text}");
        assert!(
            text.contains("must be writable") && text.contains(cache.to_str().unwrap()),
            "{text}"
        );
    }
    // Writable again: nothing was damaged, and the build finishes with the right outputs.
    assert_consistent(&w);
    crash_workspace(&w, 0);
    w.ok(TARGETS);
    assert_eq!(outputs(&w), want);
}

#[test]
fn a_full_disk_fails_the_build_clearly_and_keeps_the_cache_consistent() {
    let w = ws();
    w.write("small/in.txt", "small\n");
    w.write(
        "small/WBUILD",
        "wasi_run(name = \"s\", tool = \"//tools:probe\", srcs = [\"in.txt\"], outs = [\"s.txt\"], \
         args = [\"concat\", \"$@\", \"$(location in.txt)\"])\n",
    );
    let chunk: String = (0..16384).map(|i| format!("{i:063}\n")).collect(); // 1 MiB
    w.write("big/in.txt", &chunk);
    w.write(
        "big/WBUILD",
        &format!(
            "wasi_run(name = \"b\", tool = \"//tools:probe\", srcs = [\"in.txt\"], outs = [\"b.txt\"], \
             args = [\"concat\", \"$@\"{}])\n",
            ", \"$(location in.txt)\"".repeat(12)
        ),
    );
    // A source too big for the cache: it cannot even enter the CAS.
    w.write("huge/in.txt", &chunk.repeat(8));
    w.write(
        "huge/WBUILD",
        "wasi_run(name = \"h\", tool = \"//tools:probe\", srcs = [\"in.txt\"], outs = [\"h.txt\"], \
         args = [\"exists\", \"$(location in.txt)\", \"$@\"])\n",
    );
    let fs = Mount::tmpfs(&w.cache, "6m");
    w.ok(&["build", "//small:s"]);
    let out = w.fail(&["build", "//huge:h"]);
    let text = wbuild_tests::stderr(&out);
    assert!(
        text.contains("the device holding the cache is full")
            && text.contains("cache gc")
            && text.contains(w.cache.to_str().unwrap()),
        "{}",
        w.report(&["build", "//huge:h"], &out)
    );
    assert!(!text.contains("panicked"), "{text}");
    let out = w.fail(&["build", "//big:b"]);
    let text = wbuild_tests::stderr(&out);
    assert!(
        text.contains("the device holding the cache")
            && text.contains("full")
            && text.contains("cache gc")
            && text.contains("//big:b"),
        "{}",
        w.report(&["build", "//big:b"], &out)
    );
    // The guest's own panic is the tool's report; wbuild itself must not panic.
    assert!(
        !text
            .lines()
            .any(|l| l.contains("panicked at") && !l.contains("tests/guests/probe")),
        "{text}"
    );
    // What was there is intact and still served from the cache.
    assert_consistent(&w);
    let (out, events) = w.events(&["build", "//small:s"]);
    assert!(out.status.success());
    assert_eq!(
        wbuild_tests::statuses(&events),
        vec![("//small:s".to_owned(), "cached".to_owned())]
    );
    // With room again, the same build succeeds and its output is whole.
    fs.resize("64m");
    w.ok(&["build", "//big:b", "//huge:h"]);
    assert_eq!(w.read("wbuild-out/huge/h.txt"), "true\n");
    assert_eq!(w.read("wbuild-out/big/b.txt"), chunk.repeat(12));
    assert_consistent(&w);
}
