//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) on a free
//! loopback port, its storage in a temporary directory, killed on drop. The binary is
//! `/usr/bin/docker-registry`, or `$WBUILD_DOCKER_REGISTRY`; when it is missing the test
//! fails (it does not skip): run tests/setup.sh.
//!
//! [`OciRegistry::start_with`] can serve HTTPS (a fresh CA and a certificate for 127.0.0.1,
//! made with the `openssl` CLI) and require HTTP Basic authentication (an htpasswd file
//! made with `htpasswd` from apache2-utils).

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The configuration template (`@DIR@`, `@PORT@`).
pub fn config_template() -> PathBuf {
    crate::repo_root().join("tests/oci/registry-config.yml")
}

/// How [`OciRegistry::start_with`] configures the registry.
#[derive(Clone, Debug, Default)]
pub struct OciRegistryOptions {
    /// Serve HTTPS with a certificate for `127.0.0.1` (IP SAN) signed by a CA made for
    /// this registry: [`OciRegistry::ca_cert`].
    pub tls: bool,
    /// Require HTTP Basic authentication for this (user, password).
    pub basic_auth: Option<(String, String)>,
}

/// A running `docker-registry`.
pub struct OciRegistry {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    log: PathBuf,
    ca_cert: Option<PathBuf>,
}

impl OciRegistry {
    /// Plain HTTP, no authentication.
    pub fn start() -> OciRegistry {
        OciRegistry::start_with(&OciRegistryOptions::default())
    }

    pub fn start_with(options: &OciRegistryOptions) -> OciRegistry {
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
        let mut extra_http = String::new();
        let mut extra = String::new();
        let mut ca_cert = None;
        if options.tls {
            let (ca, cert, key) = make_certificates(dir.path());
            extra_http.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
            ca_cert = Some(ca);
        }
        if let Some((user, password)) = &options.basic_auth {
            let path = dir.path().join("htpasswd");
            fs::write(&path, htpasswd(user, password)).unwrap();
            extra.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: wbuild-test-registry\n    path: {}\n",
                path.display()
            ));
        }
        assert!(
            template.contains("\nhttp:\n"),
            "{} has no top-level `http:` section",
            template_path.display()
        );
        let template = template.replace("\nhttp:\n", &format!("\nhttp:\n{extra_http}")) + &extra;
        // Anything but a plain registry answers its readiness probe with 400 (plain HTTP to
        // an HTTPS port) or 401 (authentication): any HTTP answer then means it is up.
        let any_answer = options.tls || options.basic_auth.is_some();
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
            match wait_ready(&mut child, port, any_answer) {
                Ok(()) => {
                    return OciRegistry {
                        child,
                        port,
                        dir,
                        log,
                        ca_cert,
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

    /// The CA certificate (PEM) of a registry started with `tls`.
    pub fn ca_cert(&self) -> &Path {
        self.ca_cert
            .as_deref()
            .expect("the registry was started without tls")
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

/// Polls `GET /v2/` until it answers 200 (any HTTP status if `any_answer`). Err(true) if
/// the registry exited.
fn wait_ready(child: &mut Child, port: u16, any_answer: bool) -> Result<(), bool> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return Err(true);
        }
        if ping(port, any_answer) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(false)
}

fn ping(port: u16, any_answer: bool) -> bool {
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
    if any_answer {
        return buf[..n].starts_with(b"HTTP/1.");
    }
    buf[..n].starts_with(b"HTTP/1.1 200") || buf[..n].starts_with(b"HTTP/1.0 200")
}

/// Runs a setup tool, failing with a pointer to tests/setup.sh when it is missing.
fn run_tool(tool: &str, package: &str, args: &[&str], dir: &Path) -> Vec<u8> {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running `{tool}`: {e}; these tests need it (Debian package `{package}`): \
                 run tests/setup.sh"
            )
        });
    assert!(
        out.status.success(),
        "`{tool} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A CA and a server certificate for `127.0.0.1` (IP SAN) signed by it, all ECDSA P-256,
/// in `dir`: (CA certificate, server certificate, server key), PEM.
pub fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| run_tool("openssl", "openssl", args, dir);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=wbuild test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// An htpasswd line (bcrypt, as distribution requires; the lowest cost, for speed).
pub fn htpasswd(user: &str, password: &str) -> Vec<u8> {
    run_tool(
        "htpasswd",
        "apache2-utils",
        &["-nbB", "-C", "4", user, password],
        Path::new("."),
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
