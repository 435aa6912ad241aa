//! Support for wbuild's end-to-end tests (the tests themselves are in `tests/e2e/`): the WASI
//! guest programs and tools compiled from source by this crate's build script, and a
//! `TestCommand`-style harness that runs the real `wbuild` binary in temporary workspaces and
//! prints the command, its output and the workspace listing when something fails.

use std::path::{Path, PathBuf};

pub mod buildgrid;
pub mod oci;
pub mod process;

/// Directory holding `<name>.wasm` for every guest and tool built by build.rs.
pub fn guest_dir() -> PathBuf {
    PathBuf::from(env!("WBUILD_GUEST_DIR"))
}

/// Path of one compiled guest, e.g. `guest("probe")`, `guest("wb-tar")`.
pub fn guest(name: &str) -> PathBuf {
    let p = guest_dir().join(format!("{name}.wasm"));
    assert!(p.is_file(), "guest {} was not built", p.display());
    p
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

use std::process::{Command, Output};

/// A temporary workspace with its own cache directory, driving one `wbuild` binary.
pub struct TestWorkspace {
    pub root: PathBuf,
    pub cache: PathBuf,
    bin: PathBuf,
    /// The temporary directory holding root and cache (`None`: another workspace's).
    _dir: Option<tempfile::TempDir>,
}

impl TestWorkspace {
    /// A workspace with an empty `wbuild.toml` and the probe guest at `tools/probe.wasm`
    /// (declared as `//tools:probe`).
    pub fn new(bin: &str) -> TestWorkspace {
        let dir = tempfile::Builder::new()
            .prefix("wbuild-e2e-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().join("ws");
        let cache = dir.path().join("cache");
        std::fs::create_dir_all(&root).unwrap();
        let ws = TestWorkspace {
            root,
            cache,
            bin: PathBuf::from(bin),
            _dir: Some(dir),
        };
        ws.write("wbuild.toml", "[build]\nsource_date_epoch = 0\n");
        ws.copy_guest("probe", "tools/probe.wasm");
        ws.write(
            "tools/WBUILD",
            "wasi_tool(name = \"probe\", src = \"probe.wasm\")\n",
        );
        ws
    }

    /// The workspace `like`'s files, moved to `root` by the test, built with the same binary
    /// and cache (`like` keeps owning the temporary directory).
    pub fn at(root: &Path, like: &TestWorkspace) -> TestWorkspace {
        TestWorkspace {
            root: root.to_path_buf(),
            cache: like.cache.clone(),
            bin: like.bin.clone(),
            _dir: None,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Write a file, dated ten seconds back: as if edited a moment before the build, outside
    /// the stat cache's window for files still being written.
    pub fn write(&self, rel: &str, contents: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, contents).unwrap();
        backdate(&p);
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel))
            .unwrap_or_else(|e| panic!("read {rel}: {e}\n{}", self.listing()))
    }

    pub fn copy_guest(&self, name: &str, rel: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::copy(guest(name), &p).unwrap();
        backdate(&p);
    }

    /// The command `wbuild --cache-dir CACHE ARGS...` run in the workspace root.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.current_dir(&self.root)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .env_remove("WBUILD_CACHE");
        c
    }

    /// Runs `wbuild ARGS`; one that is still running after [`process::default_deadline`] is
    /// killed and fails the test with what it printed.
    pub fn run(&self, args: &[&str]) -> Output {
        match process::output_with_deadline(&mut self.cmd(args), process::default_deadline()) {
            Ok(out) => out,
            Err(timed_out) => panic!("{timed_out}\n--- workspace\n{}", self.listing()),
        }
    }

    /// Run and require success; on failure panic with everything needed to debug it.
    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        if !out.status.success() {
            panic!("expected success\n{}", self.report(args, &out));
        }
        out
    }

    /// Run and require failure.
    pub fn fail(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        if out.status.success() {
            panic!("expected failure\n{}", self.report(args, &out));
        }
        out
    }

    /// Run a build with `--events` and return the events (and the output).
    pub fn events(&self, args: &[&str]) -> (Output, Vec<serde_json::Value>) {
        let ev = self.root.join("../events.jsonl");
        let mut full: Vec<&str> = args.to_vec();
        let ev_s = ev.to_str().unwrap().to_owned();
        full.push("--events");
        full.push(&ev_s);
        let out = self.run(&full);
        let text = std::fs::read_to_string(&ev).unwrap_or_default();
        let events = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("event is JSON"))
            .collect();
        (out, events)
    }

    pub fn report(&self, args: &[&str], out: &Output) -> String {
        format!(
            "command: {} --cache-dir {} {}\nexit: {:?}\n--- stdout\n{}\n--- stderr\n{}\n--- workspace\n{}",
            self.bin.display(),
            self.cache.display(),
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.listing()
        )
    }

    pub fn listing(&self) -> String {
        files_under(&self.root).join("\n")
    }
}

/// Every file under `dir` that is not a directory (symlinks not followed), as sorted paths
/// relative to it; nothing if `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Set a file's mtime ten seconds before now.
/// Writes an executable script at `path`, from a child process: had this multi-threaded test
/// process held it open for writing, a fork by another test meanwhile could keep that
/// descriptor alive in its child and make running the script fail with "Text file busy".
pub fn write_executable(path: &Path, content: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run sh");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(content.as_bytes())
        .expect("write the script");
    drop(stdin);
    assert!(
        child.wait().expect("wait for sh").success(),
        "cannot write {}",
        path.display()
    );
}

pub fn backdate(p: &Path) {
    let t = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
    let f = std::fs::File::options().write(true).open(p).unwrap();
    f.set_modified(t).unwrap();
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The action events of a build, as (action name, status), sorted. The name is the label,
/// then the detail for actions that have one (`//lib:greet lib/greet.c` for a compile).
pub fn statuses(events: &[serde_json::Value]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["type"] == "action")
        .map(|e| {
            let label = e["label"].as_str().unwrap();
            (
                match e["detail"].as_str() {
                    Some(d) => format!("{label} {d}"),
                    None => label.to_owned(),
                },
                e["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The final `build_finished` event.
pub fn finished(events: &[serde_json::Value]) -> &serde_json::Value {
    events
        .iter()
        .rfind(|e| e["type"] == "build_finished")
        .expect("a build_finished event")
}
