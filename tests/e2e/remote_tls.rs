//! `wbuild build --remote grpcs://...` against `wbuild serve --tls-cert --tls-key
//! --token-file`: a private CA (`--remote-ca`), the token (`--remote-token-file`), the same
//! settings from `[remote]` in wbuild.toml, and the one warning a build without the token
//! gets when its uploads are refused.

use std::path::Path;

use wbuild_tests::buildgrid::BuildGridExec;
use wbuild_tests::process::output_with_deadline;
use wbuild_tests::{TestWorkspace, finished, stderr};

use crate::{BIN, RemoteServer, chain, free_port, wait_for_port, ws};

/// A self-signed certificate for `localhost` and 127.0.0.1 (`cert.pem`, `key.pem` in `dir`).
fn self_signed(dir: &Path) {
    let out = output_with_deadline(
        std::process::Command::new("openssl")
            .current_dir(dir)
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
            .args(["-keyout", "key.pem", "-out", "cert.pem"])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"]),
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// `wbuild serve` over TLS with a token, on its own cache in `dir`.
fn tls_server(dir: &Path) -> RemoteServer {
    let port = free_port();
    let mut child = std::process::Command::new(BIN)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--token-file")
        .arg(dir.join("token"))
        .arg("--tls-cert")
        .arg(dir.join("cert.pem"))
        .arg("--tls-key")
        .arg(dir.join("key.pem"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, &mut child);
    RemoteServer {
        child,
        url: format!("grpcs://127.0.0.1:{port}"),
        _dir: tempfile::tempdir().unwrap(),
    }
}

fn warnings(ev: &[serde_json::Value]) -> Vec<String> {
    ev.iter()
        .filter(|e| e["type"] == "warning")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn build(w: &TestWorkspace, args: &[&str]) -> (std::process::Output, Vec<serde_json::Value>) {
    let (out, ev) = w.events(args);
    assert!(out.status.success(), "{}", w.report(args, &out));
    (out, ev)
}

#[test]
fn grpcs_with_a_private_ca_and_a_token_file_shares_results() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("token"), "e2e-t0ken\n").unwrap();
    self_signed(d);
    let server = tls_server(d);
    let ca = d.join("cert.pem");
    let token = d.join("token");
    let args = [
        "build",
        "--remote",
        &server.url,
        "--remote-ca",
        ca.to_str().unwrap(),
        "--remote-token-file",
        token.to_str().unwrap(),
    ];

    // The first checkout builds and uploads, without a warning.
    let a = ws();
    chain(&a);
    let (out, ev) = build(&a, &args);
    assert_eq!(finished(&ev)["executed"], 3, "{ev:?}");
    assert!(warnings(&ev).is_empty(), "{ev:?}");
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("e2e-t0ken"), "{}", stderr(&out));

    // A second checkout with an empty cache gets everything from the server.
    let b = ws();
    chain(&b);
    let (_, ev) = build(&b, &args);
    let f = finished(&ev);
    assert_eq!(f["executed"], 0, "{ev:?}");
    assert_eq!(f["remote_cached"], 3, "{ev:?}");

    // The same from wbuild.toml, paths relative to the workspace root.
    let c = ws();
    chain(&c);
    c.write("gen/a.txt", "hello from c\n");
    std::fs::copy(&ca, c.path("ca.pem")).unwrap();
    std::fs::copy(&token, c.path("token")).unwrap();
    c.write(
        "wbuild.toml",
        &format!(
            "[build]\nsource_date_epoch = 0\n[remote]\nurl = \"{}\"\nca = \"ca.pem\"\n\
             token_file = \"token\"\n",
            server.url
        ),
    );
    let (out, ev) = build(&c, &["build"]);
    let f = finished(&ev);
    assert_eq!(f["executed"], 2, "{ev:?}");
    assert_eq!(f["remote_cached"], 1, "{ev:?}");
    assert!(warnings(&ev).is_empty(), "{ev:?}");
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));

    // Without the token, lookups still work (reads are anonymous) but uploads are refused:
    // one warning for the build, saying which flag to pass; the build goes on locally.
    let e = ws();
    chain(&e);
    e.write("gen/a.txt", "hello from e\n");
    let no_token = [
        "build",
        "--remote",
        &server.url,
        "--remote-ca",
        ca.to_str().unwrap(),
    ];
    let (_, ev) = build(&e, &no_token);
    let f = finished(&ev);
    // //other:c comes from the server if it was looked up before the first refused upload
    // turned the remote off for the rest of the build, else it runs here.
    let executed = f["executed"].as_u64().unwrap();
    assert!(executed >= 2, "{ev:?}");
    assert_eq!(executed + f["remote_cached"].as_u64().unwrap(), 3, "{ev:?}");
    let w = warnings(&ev);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("--remote-token-file"), "{w:?}");

    // Without the CA: a warning naming the URL and --remote-ca, and a local build.
    let g = ws();
    chain(&g);
    let untrusted = ["build", "--remote", &server.url];
    let out = g.ok(&untrusted);
    let err = stderr(&out);
    assert!(
        err.contains(&server.url) && err.contains("--remote-ca"),
        "{err}"
    );

    // A bad header value stops the build, naming the header and not its value.
    let bad = g.fail(&[
        "build",
        "--remote",
        &server.url,
        "--remote-header",
        "x-bad=caf\u{e9}-secret",
    ]);
    let err = stderr(&bad);
    assert!(err.contains("x-bad") && !err.contains("secret"), "{err}");
}

#[test]
fn a_credential_helper_gives_the_token_from_flags_and_from_wbuild_toml() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("token"), "helper-t0ken\n").unwrap();
    self_signed(d);
    let server = tls_server(d);
    let ca = d.join("cert.pem");
    // The helper answers Bazel's protocol: `get`, the URL on stdin, headers as JSON.
    let helper = d.join("creds");
    wbuild_tests::write_executable(
        &helper,
        &format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r req\ncase \"$req\" in *'{}'*) ;; *) exit 3 ;; esac\necho '{{\"headers\": {{\"authorization\": [\"Bearer helper-t0ken\"]}}}}'\n",
            server.url
        ),
    );
    let args = [
        "build",
        "--remote",
        &server.url,
        "--remote-ca",
        ca.to_str().unwrap(),
        "--remote-credential-helper",
        helper.to_str().unwrap(),
    ];
    // Uploads are accepted (they need the token): no warning, and another checkout gets
    // everything from the server.
    let a = ws();
    chain(&a);
    let (out, ev) = build(&a, &args);
    assert_eq!(finished(&ev)["executed"], 3, "{ev:?}");
    assert!(warnings(&ev).is_empty(), "{ev:?}");
    assert!(!stderr(&out).contains("helper-t0ken"), "{}", stderr(&out));
    let b = ws();
    chain(&b);
    let (_, ev) = build(&b, &args);
    assert_eq!(finished(&ev)["remote_cached"], 3, "{ev:?}");

    // From wbuild.toml, a path relative to the workspace root.
    let c = ws();
    chain(&c);
    c.write("gen/a.txt", "hello from c\n");
    std::fs::copy(&ca, c.path("ca.pem")).unwrap();
    std::fs::create_dir_all(c.path("tools/bin")).unwrap();
    std::fs::copy(&helper, c.path("tools/bin/creds")).unwrap();
    c.write(
        "wbuild.toml",
        &format!(
            "[build]\nsource_date_epoch = 0\n[remote]\nurl = \"{}\"\nca = \"ca.pem\"\n\
             credential_helper = \"tools/bin/creds\"\n",
            server.url
        ),
    );
    let (_, ev) = build(&c, &["build"]);
    let f = finished(&ev);
    assert_eq!(
        (f["executed"].as_u64(), f["remote_cached"].as_u64()),
        (Some(2), Some(1)),
        "{ev:?}"
    );
    assert!(warnings(&ev).is_empty(), "{ev:?}");

    // A helper that fails stops the build, naming it and what it said.
    let failing = d.join("failing");
    wbuild_tests::write_executable(&failing, "#!/bin/sh\necho 'not logged in' >&2\nexit 1\n");
    let out = c.fail(&[
        "build",
        "--remote-credential-helper",
        failing.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert!(
        err.contains("failing") && err.contains("not logged in"),
        "{err}"
    );
}

/// Runs `wbuild worker` with `args` until a line of its stderr contains `until` or it exits
/// (60 s at most): that stderr, and whether it was still running.
fn worker_stderr(args: &[&str], until: &str) -> (String, bool) {
    use std::io::BufRead;
    let cache = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(BIN)
        .arg("--cache-dir")
        .arg(cache.path())
        .arg("worker")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut text = String::new();
    let mut running = true;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                text.push_str(&line);
                text.push('\n');
                if line.contains(until) {
                    break;
                }
            }
            // The worker exited (its stderr closed).
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                running = false;
                break;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("wbuild worker {args:?}: no {until:?} after 60 s; stderr:\n{text}");
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    (text, running)
}

#[test]
fn worker_reaches_a_grpcs_engine_with_the_same_flags() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("token"), "e2e-t0ken\n").unwrap();
    self_signed(d);
    // `wbuild serve` has no Bots service: a worker that got through TLS is told so when it
    // opens its session.
    let server = tls_server(d);
    let ca = d.join("cert.pem");
    let token = d.join("token");
    let (text, running) = worker_stderr(
        &[
            "--engine",
            &server.url,
            "--remote-ca",
            ca.to_str().unwrap(),
            "--remote-token-file",
            token.to_str().unwrap(),
            "-j",
            "1",
        ],
        "cannot open a bot session",
    );
    assert!(running, "{text}");
    assert!(text.contains("not implemented"), "{text}");
    // Without the CA the worker stops at once, naming the URL and the flag.
    let (text, _) = worker_stderr(&["--engine", &server.url, "-j", "1"], "--remote-ca");
    assert!(
        text.contains(&server.url) && text.contains("--remote-ca"),
        "{text}"
    );
}

/// A `wbuild worker` process, killed on drop.
struct Worker {
    child: std::process::Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Worker {
    /// Starts one for `engine` with `extra` flags; returns once it holds a bot session.
    fn start(engine: &BuildGridExec, extra: &[&str]) -> Worker {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("worker.log");
        let child = std::process::Command::new(BIN)
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .args([
                "worker",
                "--engine",
                &engine.url,
                "--name",
                "wtls",
                "-j",
                "2",
            ])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut w = Worker {
            child,
            log,
            _dir: dir,
        };
        let t0 = std::time::Instant::now();
        while !w.log().contains(": session ") {
            if let Ok(Some(status)) = w.child.try_wait() {
                panic!("the worker exited ({status}):\n{}", w.log());
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(60),
                "the worker did not open a session in 60 s:\n{}\n--- engine ---\n{}",
                w.log(),
                engine.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        w
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- worker log ---\n{}", self.log());
        }
    }
}

#[test]
fn buildgrid_behind_tls_runs_actions_on_a_grpcs_worker() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    self_signed(d);
    let ca = d.join("cert.pem");
    let engine = BuildGridExec::start_tls(&ca, &d.join("key.pem"));
    assert!(engine.url.starts_with("grpcs://"), "{}", engine.url);
    let _worker = Worker::start(&engine, &["--remote-ca", ca.to_str().unwrap()]);
    let args = [
        "build",
        "--remote-executor",
        &engine.url,
        "--remote-ca",
        ca.to_str().unwrap(),
    ];
    let a = ws();
    chain(&a);
    let (out, ev) = build(&a, &args);
    let f = finished(&ev);
    assert_eq!(f["remote_executed"], 3, "{ev:?}\n{}", engine.log());
    assert!(warnings(&ev).is_empty(), "{ev:?}");
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    assert_eq!(
        a.read("wbuild-out/gen/abab.txt"),
        "hello\nworld\nhello\nworld\n"
    );
    // Another checkout finds the results in the engine's action cache, over TLS too.
    let b = ws();
    chain(&b);
    let (_, ev) = build(&b, &args);
    assert_eq!(finished(&ev)["remote_cached"], 3, "{ev:?}");
}
