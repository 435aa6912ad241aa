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
        other => {
            eprintln!("probe: unknown mode {other:?}");
            std::process::exit(2);
        }
    }
}
