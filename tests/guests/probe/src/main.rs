//! `probe`: a guest program for wbuild's end-to-end tests. Each mode exercises one thing the
//! WASI sandbox must get right (reads, writes, determinism, escapes, failures, limits).
//!
//! Usage: `probe MODE ARGS...`; see `main` for the modes.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

fn attempt(out: &mut String, what: &str, r: std::io::Result<impl std::fmt::Debug>) {
    match r {
        Ok(v) => out.push_str(&format!("{what}: OK {v:?}\n")),
        Err(e) => out.push_str(&format!("{what}: ERR {:?}\n", e.kind())),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    match mode {
        // probe concat OUT IN... : OUT = concatenation of the inputs
        "concat" => {
            let mut data = Vec::new();
            for p in &args[3..] {
                data.extend(fs::read(p).unwrap_or_else(|e| panic!("read {p}: {e}")));
            }
            fs::write(&args[2], data).expect("write output");
        }
        // probe read PATH : print the file (for undeclared-read tests)
        "read" => {
            let s = fs::read_to_string(&args[2]).unwrap_or_else(|e| format!("<{:?}>", e.kind()));
            print!("{s}");
        }
        // probe exists PATH OUT : probe a path without reading it
        "exists" => {
            let e = fs::metadata(&args[2]).is_ok();
            fs::write(&args[3], format!("{e}\n")).expect("write output");
        }
        // probe world OUT : everything that must be deterministic
        "world" => {
            let mut s = String::new();
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            s.push_str(&format!("wall: {}\n", now.as_nanos()));
            let t0 = Instant::now();
            let t1 = Instant::now();
            s.push_str(&format!("mono: {:?}\n", t1.duration_since(t0)));
            let mut m: HashMap<u32, u32> = HashMap::new();
            for i in 0..32 {
                m.insert(i, i);
            }
            let order: Vec<u32> = m.keys().copied().collect();
            s.push_str(&format!("hash order: {order:?}\n"));
            let mut vars: Vec<(String, String)> = std::env::vars().collect();
            vars.sort();
            s.push_str(&format!("env: {vars:?}\n"));
            s.push_str(&format!("cwd: {:?}\n", std::env::current_dir().ok()));
            let mut names = Vec::new();
            for e in fs::read_dir(".").expect("list root") {
                let e = e.unwrap();
                names.push(e.file_name().into_string().unwrap());
            }
            s.push_str(&format!("listing of .: {names:?}\n"));
            for p in &args[3..] {
                let md = fs::metadata(p).expect("stat input");
                s.push_str(&format!(
                    "{p}: len {} mtime {:?}\n",
                    md.len(),
                    md.modified()
                        .ok()
                        .map(|t| t.duration_since(UNIX_EPOCH).unwrap())
                ));
            }
            fs::write(&args[2], s).expect("write output");
        }
        // probe escape OUT INPUT : try every way out; report each result
        "escape" => {
            let mut s = String::new();
            attempt(&mut s, "read ../outside", fs::read("../outside"));
            attempt(&mut s, "read /etc/passwd", fs::read("/etc/passwd"));
            attempt(&mut s, "read /../etc/passwd", fs::read("/../etc/passwd"));
            attempt(
                &mut s,
                "read /tmp/../../etc/passwd",
                fs::read("/tmp/../../etc/passwd"),
            );
            attempt(&mut s, "list /..", fs::read_dir("/..").map(|_| ()));
            #[allow(deprecated)] // soft_link is the portable (wasip1 and host) spelling
            {
                use std::fs::soft_link as symlink_path;
                attempt(
                    &mut s,
                    "symlink /tmp/up -> ../..",
                    symlink_path("../..", "/tmp/up"),
                );
                attempt(
                    &mut s,
                    "read /tmp/up/etc/passwd",
                    fs::read("/tmp/up/etc/passwd"),
                );
                attempt(
                    &mut s,
                    "symlink /tmp/abs -> /etc",
                    symlink_path("/etc", "/tmp/abs"),
                );
                attempt(&mut s, "read /tmp/abs/passwd", fs::read("/tmp/abs/passwd"));
                attempt(
                    &mut s,
                    "symlink out -> input",
                    symlink_path(&args[3], "sneaky"),
                );
            }
            attempt(&mut s, "write input", fs::write(&args[3], b"overwritten"));
            attempt(
                &mut s,
                "append input",
                fs::OpenOptions::new()
                    .append(true)
                    .open(&args[3])
                    .map(|_| ()),
            );
            attempt(
                &mut s,
                "truncate input",
                fs::OpenOptions::new()
                    .write(true)
                    .open(&args[3])
                    .and_then(|f| f.set_len(0)),
            );
            attempt(&mut s, "remove input", fs::remove_file(&args[3]));
            attempt(&mut s, "rename input", fs::rename(&args[3], "stolen"));
            attempt(&mut s, "hard link input", fs::hard_link(&args[3], "linked"));
            attempt(
                &mut s,
                "write undeclared",
                fs::write("undeclared.txt", b"x"),
            );
            attempt(&mut s, "mkdir undeclared", fs::create_dir("newdir"));
            attempt(
                &mut s,
                "tcp connect",
                std::net::TcpStream::connect("127.0.0.1:1").map(|_| ()),
            );
            let after = fs::read(&args[3]).map(|b| String::from_utf8_lossy(&b).into_owned());
            attempt(&mut s, "input afterwards", after);
            print!("{s}");
            fs::write(&args[2], s).expect("write output");
        }
        // probe tmp OUT : /tmp is private, writable, and not an output
        "tmp" => {
            let before: Vec<_> = fs::read_dir("/tmp").expect("list /tmp").collect();
            fs::create_dir_all("/tmp/a/b").expect("mkdir /tmp/a/b");
            fs::write("/tmp/a/b/scratch", b"scratch").expect("write /tmp");
            let back = fs::read("/tmp/a/b/scratch").expect("read /tmp");
            fs::write(
                &args[2],
                format!(
                    "tmp was empty: {}\n{}",
                    before.is_empty(),
                    String::from_utf8_lossy(&back)
                ),
            )
            .expect("write output");
        }
        // probe exit N : print to stderr and exit with N
        "exit" => {
            let code: i32 = args[2].parse().unwrap();
            eprintln!("probe: exiting with {code}");
            std::process::exit(code);
        }
        "trap" => {
            eprintln!("probe: about to trap");
            panic!("deliberate panic");
        }
        // probe alloc MIB : allocate and touch MIB mebibytes
        "alloc" => {
            let mib: usize = args[2].parse().unwrap();
            let mut v: Vec<Vec<u8>> = Vec::new();
            for _ in 0..mib {
                v.push(vec![1u8; 1 << 20]);
            }
            println!("allocated {} MiB", v.len());
        }
        // probe spin ITERATIONS OUT : burn CPU, then write OUT
        "spin" => {
            let n: u64 = args[2].parse().unwrap();
            let mut x: u64 = 0;
            for i in 0..n {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            fs::write(&args[3], format!("{}\n", x % 7)).expect("write output");
        }
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = x.wrapping_add(1);
                if x == u64::MAX {
                    break;
                }
                std::hint::black_box(x);
            }
        }
        // probe say TEXT OUT : write TEXT to stdout and OUT (stdout shown only on request)
        "say" => {
            println!("{}", args[2]);
            let _ = std::io::stdout().flush();
            fs::write(&args[3], format!("{}\n", args[2])).expect("write output");
        }
        // Hostile modes (tests/e2e/hostile.rs). Each reports every attempt on stdout, one line
        // per attempt ("WHAT: OK ..." or "WHAT: ERR Kind"), then writes the report to OUT if
        // it can.

        // probe tryread OUT PATH... : read, stat, list, lstat and readlink each path
        "tryread" => {
            let mut s = String::new();
            for p in &args[3..] {
                attempt(
                    &mut s,
                    &format!("read {p}"),
                    fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned()),
                );
                attempt(
                    &mut s,
                    &format!("stat {p}"),
                    fs::metadata(p).map(|m| m.len()),
                );
                attempt(&mut s, &format!("list {p}"), list(p));
                attempt(
                    &mut s,
                    &format!("lstat {p}"),
                    fs::symlink_metadata(p).map(|m| m.file_type().is_symlink()),
                );
                attempt(&mut s, &format!("readlink {p}"), fs::read_link(p));
            }
            report(&s, &args[2]);
        }
        // probe tmplinks OUT TARGET... : make /tmp/lN -> TARGET, then use it every way
        "tmplinks" => {
            let mut s = String::new();
            for (i, target) in args[3..].iter().enumerate() {
                let link = format!("/tmp/l{i}");
                attempt(
                    &mut s,
                    &format!("symlink {link} -> {target}"),
                    symlink(target, &link),
                );
                attempt(
                    &mut s,
                    &format!("read {link}"),
                    fs::read(&link).map(|b| String::from_utf8_lossy(&b).into_owned()),
                );
                attempt(
                    &mut s,
                    &format!("stat {link}"),
                    fs::metadata(&link).map(|m| m.len()),
                );
                attempt(&mut s, &format!("list {link}"), list(&link));
                attempt(
                    &mut s,
                    &format!("write {link}"),
                    fs::write(&link, b"hostile"),
                );
                attempt(
                    &mut s,
                    &format!("append {link}"),
                    fs::OpenOptions::new()
                        .append(true)
                        .open(&link)
                        .and_then(|mut f| f.write_all(b"hostile")),
                );
            }
            report(&s, &args[2]);
        }
        // probe linkout OUT TARGET INPUT direct|via-tmp keep|replace : make the declared
        // output OUT a symlink to TARGET (directly, or made in /tmp and renamed onto OUT),
        // try to write INPUT through it, then leave the link or replace it with a file
        "linkout" => {
            let (out, target, input) = (&args[2], &args[3], &args[4]);
            let mut s = String::new();
            // The host made OUT a directory if another output lies under it.
            if fs::symlink_metadata(out).is_ok_and(|m| m.is_dir()) {
                attempt(&mut s, "remove directory out", fs::remove_dir(out));
            }
            if args[5] == "via-tmp" {
                attempt(&mut s, "symlink /tmp/link", symlink(target, "/tmp/link"));
                attempt(
                    &mut s,
                    "rename /tmp/link -> out",
                    fs::rename("/tmp/link", out),
                );
            } else {
                attempt(&mut s, "symlink out", symlink(target, out));
            }
            attempt(
                &mut s,
                "is a symlink",
                fs::symlink_metadata(out).map(|m| m.file_type().is_symlink()),
            );
            attempt(
                &mut s,
                "read through link",
                fs::read(out).map(|b| String::from_utf8_lossy(&b).into_owned()),
            );
            attempt(&mut s, "write through link", fs::write(out, b"hostile"));
            attempt(
                &mut s,
                "append through link",
                fs::OpenOptions::new()
                    .append(true)
                    .open(out)
                    .and_then(|mut f| f.write_all(b"hostile")),
            );
            attempt(
                &mut s,
                "overwrite through link",
                fs::OpenOptions::new()
                    .write(true)
                    .open(out)
                    .and_then(|mut f| f.write_all(b"HOSTILE")),
            );
            attempt(
                &mut s,
                "truncate through link",
                fs::OpenOptions::new()
                    .write(true)
                    .open(out)
                    .and_then(|f| f.set_len(0)),
            );
            attempt(
                &mut s,
                "set times through link",
                raw::path_set_times(out, true),
            );
            attempt(
                &mut s,
                "input afterwards",
                fs::read(input).map(|b| String::from_utf8_lossy(&b).into_owned()),
            );
            if args[6] == "replace" {
                attempt(&mut s, "remove link", fs::remove_file(out));
                attempt(&mut s, "write out", fs::write(out, b"clean\n"));
            }
            print!("{s}");
        }
        // probe inputs OUT INPUT : every other way to change a declared input
        "inputs" => {
            let input = &args[3];
            let mut s = String::new();
            let ro = || fs::File::open(input);
            attempt(
                &mut s,
                "set_len on a read-only fd",
                ro().and_then(|f| f.set_len(0)),
            );
            attempt(
                &mut s,
                "write on a read-only fd",
                ro().and_then(|mut f| f.write_all(b"hostile")),
            );
            attempt(
                &mut s,
                "set times on a read-only fd",
                ro().and_then(|f| f.set_modified(UNIX_EPOCH)),
            );
            attempt(
                &mut s,
                "allocate on a read-only fd",
                ro().and_then(|f| raw::allocate(&f, 1 << 20)),
            );
            attempt(
                &mut s,
                "set times by path",
                raw::path_set_times(input, true),
            );
            attempt(
                &mut s,
                "set times by path (nofollow)",
                raw::path_set_times(input, false),
            );
            attempt(&mut s, "write input", fs::write(input, b"hostile"));
            attempt(
                &mut s,
                "write input via ./ and //",
                fs::write(format!(".//{input}"), b"hostile"),
            );
            let (dir, base) = input.rsplit_once('/').unwrap_or((".", input));
            attempt(
                &mut s,
                "write input via ..",
                fs::write(format!("{dir}/../{dir}/{base}"), b"hostile"),
            );
            attempt(
                &mut s,
                "create_new input",
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(input)
                    .map(|_| ()),
            );
            attempt(
                &mut s,
                "append input",
                fs::OpenOptions::new().append(true).open(input).map(|_| ()),
            );
            attempt(
                &mut s,
                "truncate input",
                fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(input)
                    .map(|_| ()),
            );
            attempt(&mut s, "remove input", fs::remove_file(input));
            attempt(&mut s, "rename input", fs::rename(input, "/tmp/stolen"));
            let _ = fs::write("/tmp/evil", b"hostile");
            attempt(&mut s, "rename over input", fs::rename("/tmp/evil", input));
            attempt(&mut s, "symlink over input", symlink("/tmp/evil", input));
            attempt(&mut s, "hard link input", fs::hard_link(input, "/tmp/hl"));
            attempt(&mut s, "remove input dir", fs::remove_dir(dir));
            attempt(&mut s, "mkdir at input", fs::create_dir(input));
            attempt(
                &mut s,
                "input afterwards",
                fs::read(input).map(|b| String::from_utf8_lossy(&b).into_owned()),
            );
            report(&s, &args[2]);
        }
        // probe argv0 OUT : OUT = the program name the module was run under
        "argv0" => {
            fs::write(&args[2], format!("{}\n", args[0])).unwrap();
        }
        // probe tmprename OUT keep|remove|leave : as compilers and linkers do, write OUT's
        // content to a temporary file beside it and rename it onto OUT; also write a second
        // temporary file and remove it (keep: leave it there; leave: skip the rename, so the
        // first temporary stays and OUT is never written)
        "tmprename" => {
            let out = &args[2];
            let how = args[3].as_str();
            let tmp = format!("{out}.tmp-123");
            let scratch = format!("{out}.scratch");
            let mut s = String::new();
            attempt(
                &mut s,
                "stat temp before",
                fs::metadata(&tmp).map(|m| m.len()),
            );
            attempt(&mut s, "write temp", fs::write(&tmp, b"made via a temp\n"));
            attempt(&mut s, "read temp", fs::read(&tmp).map(|b| b.len()));
            attempt(&mut s, "write scratch", fs::write(&scratch, b"x"));
            if how != "keep" {
                attempt(&mut s, "remove scratch", fs::remove_file(&scratch));
            }
            attempt(
                &mut s,
                "stat scratch",
                fs::metadata(&scratch).map(|m| m.len()),
            );
            if how != "leave" {
                attempt(&mut s, "rename temp", fs::rename(&tmp, out));
                attempt(
                    &mut s,
                    "stat temp after",
                    fs::metadata(&tmp).map(|m| m.len()),
                );
            }
            eprint!("{s}");
        }
        // probe extra OUT OTHER : create files nobody declared, write another target's output,
        // then write OUT
        "extra" => {
            let out = &args[2];
            let dir = out.rsplit_once('/').map(|(d, _)| d).unwrap_or(".");
            let mut s = String::new();
            attempt(
                &mut s,
                "write sibling of output",
                fs::write(format!("{dir}/extra.txt"), b"x"),
            );
            attempt(
                &mut s,
                "mkdir next to output",
                fs::create_dir(format!("{dir}/sub")),
            );
            attempt(&mut s, "write in root", fs::write("stray.txt", b"x"));
            attempt(
                &mut s,
                "write another target's output",
                fs::write(&args[3], b"hijacked"),
            );
            attempt(
                &mut s,
                "write wbuild-out",
                fs::write(format!("wbuild-out/{out}"), b"x"),
            );
            report(&s, out);
        }
        // probe fdhog INPUT MAX SPIN OUT : open INPUT up to MAX times and hold every
        // descriptor while burning SPIN iterations, then close them and write OUT
        "fdhog" => {
            let max: usize = args[3].parse().unwrap();
            let spin: u64 = args[4].parse().unwrap();
            let mut held = Vec::new();
            let mut err = None;
            while held.len() < max {
                match fs::File::open(&args[2]) {
                    Ok(f) => held.push(f),
                    Err(e) => {
                        err = Some(e.kind());
                        break;
                    }
                }
            }
            let mut x: u64 = 0;
            for i in 0..spin {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            println!("opened {} then {err:?} ({})", held.len(), x % 2);
            drop(held);
            // Descriptors are usable again once closed.
            let again = fs::read(&args[2]).map(|b| b.len());
            fs::write(&args[5], format!("reopened: {again:?}\n")).expect("write output");
        }
        // probe recurse : unbounded recursion
        "recurse" => {
            fn down(n: u64) -> u64 {
                if std::hint::black_box(n) == u64::MAX {
                    return 0;
                }
                std::hint::black_box(down(n + 1)).wrapping_add(1)
            }
            println!("returned {}", down(0));
        }
        // probe flood MIB OUT : write MIB mebibytes to stdout (ignoring errors), then OUT
        "flood" => {
            let mib: usize = args[2].parse().unwrap();
            let chunk = vec![b'x'; 1 << 20];
            let mut out = std::io::stdout().lock();
            let mut written = 0;
            for _ in 0..mib {
                match out.write_all(&chunk) {
                    Ok(()) => written += 1,
                    Err(_) => break,
                }
            }
            drop(out);
            eprintln!("flood: {written} MiB accepted");
            fs::write(&args[3], b"flooded\n").expect("write output");
        }
        // probe cpp OUT SRC DIR... : a preprocessor's include search: each `#include "x"`
        // line is replaced by the first DIR/x that exists (probing the others), recursively
        "cpp" => {
            fn expand(path: &str, dirs: &[String], out: &mut String, depth: usize) {
                assert!(depth < 32, "include nesting too deep at {path}");
                let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
                for line in text.lines() {
                    let inc = line
                        .strip_prefix("#include \"")
                        .and_then(|r| r.strip_suffix('"'));
                    match inc {
                        Some(name) => {
                            let found = dirs
                                .iter()
                                .map(|d| format!("{d}/{name}"))
                                .find(|p| fs::metadata(p).is_ok())
                                .unwrap_or_else(|| panic!("{path}: {name} not found"));
                            expand(&found, dirs, out, depth + 1);
                        }
                        None => {
                            out.push_str(line);
                            out.push('\n');
                        }
                    }
                }
            }
            let mut out = String::new();
            expand(&args[3], &args[4..], &mut out, 0);
            fs::write(&args[2], out).expect("write output");
        }
        // probe whoami : print the program name it runs under (argv[0])
        "whoami" => println!("{}", args[0]),
        // probe ls OUT DIR : the sorted names in DIR (contents are not read)
        "ls" => {
            let mut names = list(&args[3]).unwrap_or_else(|e| panic!("list {}: {e}", args[3]));
            names.sort();
            fs::write(&args[2], names.join("\n") + "\n").expect("write output");
        }
        // probe probes N OUT : look up N paths that do not exist, and a few outside the root
        "probes" => {
            let n: usize = args[2].parse().unwrap();
            let mut found = 0;
            for i in 0..n {
                found += usize::from(fs::metadata(format!("nothing/{i}")).is_ok());
            }
            for p in ["../../etc/passwd", "/etc/shadow", "../x"] {
                found += usize::from(fs::metadata(p).is_ok());
            }
            fs::write(&args[3], format!("{found}\n")).expect("write output");
        }
        other => {
            eprintln!("probe: unknown mode {other:?}");
            std::process::exit(2);
        }
    }
}

/// Print the report and write it to `out` (which may be refused).
fn report(s: &str, out: &str) {
    print!("{s}");
    let _ = std::io::stdout().flush();
    if let Err(e) = fs::write(out, s) {
        println!("write {out}: ERR {:?}", e.kind());
    }
}

fn list(p: &str) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for e in fs::read_dir(p)? {
        names.push(e?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

#[allow(deprecated)] // soft_link is the portable (wasip1 and host) spelling
fn symlink(target: &str, link: &str) -> std::io::Result<()> {
    fs::soft_link(target, link)
}

/// Raw preview1 calls std does not offer.
#[cfg(target_os = "wasi")]
mod raw {
    use std::io;

    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        fn path_filestat_set_times(
            fd: i32,
            flags: i32,
            path: *const u8,
            path_len: usize,
            atim: i64,
            mtim: i64,
            fst_flags: i32,
        ) -> i32;
        fn fd_allocate(fd: i32, offset: i64, len: i64) -> i32;
    }

    fn check(errno: i32) -> io::Result<()> {
        match errno {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    /// Set atime and mtime of a path relative to the root preopen (fd 3).
    pub fn path_set_times(path: &str, follow: bool) -> io::Result<()> {
        let path = path.trim_start_matches("./");
        // fstflags: ATIM | MTIM (set both to the given values).
        // SAFETY: the pointer and length describe `path`, alive for the call.
        check(unsafe {
            path_filestat_set_times(3, follow as i32, path.as_ptr(), path.len(), 1, 1, 1 | 4)
        })
    }

    pub fn allocate(f: &std::fs::File, len: i64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: plain integers.
        check(unsafe { fd_allocate(f.as_raw_fd(), 0, len) })
    }
}

#[cfg(not(target_os = "wasi"))]
mod raw {
    use std::io;
    pub fn path_set_times(_: &str, _: bool) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
    pub fn allocate(_: &std::fs::File, _: i64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
}
