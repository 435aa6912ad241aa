//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) on a free
//! loopback port, its storage in a temporary directory, killed on drop. The binary is
//! `/usr/bin/docker-registry`, or `$WBUILD_DOCKER_REGISTRY`; when it is missing the test
//! fails (it does not skip): run tests/setup.sh.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The configuration template (`@DIR@`, `@PORT@`).
pub fn config_template() -> PathBuf {
    crate::repo_root().join("tests/oci/registry-config.yml")
}

/// A running `docker-registry`.
pub struct OciRegistry {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl OciRegistry {
    pub fn start() -> OciRegistry {
        let bin = std::env::var_os("WBUILD_DOCKER_REGISTRY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/docker-registry"));
        assert!(
            bin.is_file(),
            "{} not found: these tests need a real OCI registry (Debian package \
             `docker-registry`, distribution 2.8); run tests/setup.sh, or point \
             WBUILD_DOCKER_REGISTRY at a `docker-registry` binary",
            bin.display()
        );
        let template_path = config_template();
        let template = fs::read_to_string(&template_path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", template_path.display()));
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("storage");
        fs::create_dir(&storage).unwrap();
        // The port is picked by binding :0 and released before the registry binds it, so
        // another process can take it in between: retry with a new port then.
        for attempt in 0..5 {
            let port = free_port();
            let config = dir.path().join(format!("config-{attempt}.yml"));
            fs::write(
                &config,
                template
                    .replace("@DIR@", storage.to_str().unwrap())
                    .replace("@PORT@", &port.to_string()),
            )
            .unwrap();
            let log = dir.path().join(format!("registry-{attempt}.log"));
            let log_file = fs::File::create(&log).unwrap();
            let mut child = Command::new(&bin)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            match wait_ready(&mut child, port) {
                Ok(()) => {
                    return OciRegistry {
                        child,
                        port,
                        dir,
                        log,
                    };
                }
                Err(exited) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = fs::read_to_string(&log).unwrap_or_default();
                    if exited && log.contains("address already in use") && attempt < 4 {
                        continue;
                    }
                    panic!("docker-registry did not become ready on port {port}; its log:\n{log}");
                }
            }
        }
        unreachable!()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where distribution's filesystem driver keeps a blob's bytes.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for OciRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("docker-registry log:\n{}", self.log_text());
        }
    }
}

/// Polls `GET /v2/` until it answers 200. Err(true) if the registry exited.
fn wait_ready(child: &mut Child, port: u16) -> Result<(), bool> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return Err(true);
        }
        if ping(port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(false)
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    buf[..n].starts_with(b"HTTP/1.1 200") || buf[..n].starts_with(b"HTTP/1.0 200")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
