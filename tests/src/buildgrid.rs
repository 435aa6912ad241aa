//! BuildGrid (PyPI buildgrid==0.4.4) as a REAPI remote-execution engine for tests: Execution,
//! Operations, Remote Workers (Bots), CAS, ByteStream and ActionCache on a free loopback port,
//! its SQL scheduler on a PostgreSQL database of its own, its CAS and log in a temporary
//! directory; killed and its database dropped on drop. The configuration is
//! `tests/reapi/buildgrid-exec.yml` (see there for why each setting).
//!
//! Needs what tests/setup.sh installs: `bgd` in target/buildgrid-venv (or `$WBUILD_BGD`) with
//! psycopg2, PostgreSQL (its `main` cluster, started here if it is down) and the role
//! bgd/insecure that may create databases. When they are missing the test fails (it does not
//! skip).

use std::fs;
use std::io::ErrorKind;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::process::output_with_deadline;

/// BuildGrid's `bgd`: `$WBUILD_BGD`, or the venv tests/setup.sh creates.
pub fn bgd_path() -> PathBuf {
    let bgd = std::env::var_os("WBUILD_BGD")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target/buildgrid-venv/bin/bgd"));
    assert!(
        bgd.exists(),
        "BuildGrid's bgd is not at {}: run tests/setup.sh (or set WBUILD_BGD)",
        bgd.display()
    );
    bgd
}

/// The configuration template (`@PORT@`, `@DATABASE@`; `$BGD_CAS_DIR` from the environment).
pub fn config_template() -> PathBuf {
    crate::repo_root().join("tests/reapi/buildgrid-exec.yml")
}

/// How long [`BuildGridExec::start`] waits for the server.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// BuildGrid as a remote-execution engine on loopback (its own PostgreSQL database, CAS dir, log).
pub struct BuildGridExec {
    /// `grpc://127.0.0.1:<port>` (`grpcs://` with TLS).
    pub url: String,
    pub port: u16,
    /// The PostgreSQL database of its scheduler (role bgd/insecure on 127.0.0.1).
    pub database: String,
    child: Child,
    log: PathBuf,
    // Dropped after the server is killed (in this order): the database, then the directory.
    _db: Database,
    _dir: tempfile::TempDir,
}

impl BuildGridExec {
    /// Starts one; panics with the bgd log if it does not come up within ~60 s.
    pub fn start() -> BuildGridExec {
        BuildGridExec::start_with(None)
    }

    /// Starts one that serves TLS only (`grpcs://`), with this certificate chain and key
    /// (PEM files).
    pub fn start_tls(cert: &Path, key: &Path) -> BuildGridExec {
        BuildGridExec::start_with(Some((cert, key)))
    }

    fn start_with(tls: Option<(&Path, &Path)>) -> BuildGridExec {
        let deadline = Instant::now() + START_TIMEOUT;
        let bgd = bgd_path();
        let template_path = config_template();
        let mut template = fs::read_to_string(&template_path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", template_path.display()));
        if let Some((cert, key)) = tls {
            let plain = "    insecure-mode: true\n";
            assert!(template.contains(plain), "{}", template_path.display());
            template = template.replace(
                plain,
                &format!(
                    "    insecure-mode: false\n    credentials:\n      tls-server-key: {}\n      \
                     tls-server-cert: {}\n",
                    key.display(),
                    cert.display()
                ),
            );
        }
        let scheme = if tls.is_some() { "grpcs" } else { "grpc" };
        let db = Database::create();
        let migrate = bounded(
            Command::new(&bgd).args(["migrate", "apply", &db.connection_string()]),
            Duration::from_secs(120),
        );
        assert!(
            migrate.status.success(),
            "bgd migrate apply on database {} failed:\n{}",
            db.name,
            output_text(&migrate)
        );
        let dir = tempfile::Builder::new()
            .prefix("wbuild-bgd-exec-")
            .tempdir()
            .unwrap();
        let cas = dir.path().join("cas");
        fs::create_dir(&cas).unwrap();
        // The port is picked by binding :0 and released before bgd binds it, so another
        // process can take it in between: retry with a new port then (the configuration turns
        // SO_REUSEPORT off, so bgd fails instead of sharing the port).
        for attempt in 0..5 {
            let port = crate::oci::free_port();
            let config = dir.path().join(format!("buildgrid-{attempt}.yml"));
            fs::write(
                &config,
                template
                    .replace("@PORT@", &port.to_string())
                    .replace("@DATABASE@", &db.name),
            )
            .unwrap();
            let log = dir.path().join(format!("bgd-{attempt}.log"));
            let log_file = fs::File::create(&log).unwrap();
            let pid_file = dir.path().join(format!("bgd-{attempt}.pid"));
            let mut child = Command::new(&bgd)
                .args(["server", "start", "-vv", "--pid-file"])
                .arg(&pid_file)
                .arg(&config)
                .env("BGD_CAS_DIR", &cas)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bgd.display()));
            match wait_ready(&mut child, port, &pid_file, deadline) {
                Ok(()) => {
                    return BuildGridExec {
                        url: format!("{scheme}://127.0.0.1:{port}"),
                        port,
                        database: db.name.clone(),
                        child,
                        log,
                        _db: db,
                        _dir: dir,
                    };
                }
                Err(exited) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let text = fs::read_to_string(&log).unwrap_or_default();
                    if exited && text.contains("Failed to bind to address") && attempt < 4 {
                        continue;
                    }
                    let why = if exited {
                        "exited before it was ready"
                    } else {
                        "was not ready after 60 s"
                    };
                    panic!(
                        "BuildGrid (bgd server start, port {port}, database {}) {why}; its log:\n{text}",
                        db.name
                    );
                }
            }
        }
        unreachable!()
    }

    /// The server log so far (for assertion messages).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for BuildGridExec {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("BuildGrid log ({}):\n{}", self.url, self.log());
        }
    }
}

/// Ready once bgd has written its pid file (it does so after its gRPC server started, with
/// every scheduler thread running) and its port accepts connections. Err(true) if it exited.
fn wait_ready(
    child: &mut Child,
    port: u16,
    pid_file: &Path,
    deadline: Instant,
) -> Result<(), bool> {
    let pid = child.id().to_string();
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return Err(true);
        }
        let started = fs::read_to_string(pid_file).is_ok_and(|p| p.trim() == pid);
        if started && TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(false)
}

/// A fresh PostgreSQL database owned by bgd, dropped on drop.
struct Database {
    name: String,
}

impl Database {
    fn create() -> Database {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        ensure_postgres();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "{DB_PREFIX}{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        // template0: nobody ever connects to it, so concurrent creations cannot fail with
        // "source database is being accessed by other users".
        let out = bounded(
            pg_tool("createdb").args(["--owner=bgd", "--template=template0", &name]),
            PG_DEADLINE,
        );
        assert!(
            out.status.success(),
            "createdb {name} as bgd on 127.0.0.1 failed (run tests/setup.sh: it makes the role \
             bgd/insecure):\n{}",
            output_text(&out)
        );
        Database { name }
    }

    fn connection_string(&self) -> String {
        format!("postgresql+psycopg2://bgd:insecure@127.0.0.1/{}", self.name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        drop_database(&self.name);
    }
}

/// Test databases are `<DB_PREFIX><pid>_<counter>_<nanos>`.
const DB_PREFIX: &str = "bgd_t_";

fn drop_database(name: &str) {
    // --force: ends the connections a killed server may still have (PostgreSQL 13+).
    match output_with_deadline(
        pg_tool("dropdb").args(["--if-exists", "--force", name]),
        PG_DEADLINE,
    ) {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!("dropdb {name} failed:\n{}", output_text(&out)),
        Err(e) => eprintln!("dropdb {name}: {e}"),
    }
}

/// A PostgreSQL client tool talking to 127.0.0.1 as bgd/insecure.
fn pg_tool(tool: &str) -> Command {
    let mut cmd = Command::new(tool);
    cmd.args(["-h", "127.0.0.1", "-U", "bgd", "-w"])
        .env("PGPASSWORD", "insecure")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null());
    cmd
}

/// Starts the PostgreSQL cluster if nothing answers on 127.0.0.1 (once per process), and
/// drops the databases left by test processes that no longer exist.
fn ensure_postgres() {
    static CHECKED: Mutex<bool> = Mutex::new(false);
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if *checked {
        return;
    }
    if !pg_ready() {
        let version = postgres_version();
        // Another process may be starting it too: its exit status does not matter, whether
        // the server then answers does.
        let out = output_with_deadline(
            Command::new("pg_ctlcluster").args([&version, "main", "start"]),
            PG_DEADLINE,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pg_ready() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL {version} does not answer on 127.0.0.1 after `pg_ctlcluster {version} \
                 main start` ({}); run tests/setup.sh",
                match &out {
                    Ok(out) => output_text(out),
                    Err(e) => e.to_string(),
                }
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    drop_stale_databases();
    *checked = true;
}

fn pg_ready() -> bool {
    match Command::new("pg_isready")
        .args(["-q", "-t", "5", "-h", "127.0.0.1"])
        .stdin(Stdio::null())
        .status()
    {
        Ok(status) => status.success(),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("pg_isready not found: these tests need PostgreSQL; run tests/setup.sh")
        }
        Err(e) => panic!("running pg_isready: {e}"),
    }
}

/// The newest installed PostgreSQL server version (`/usr/lib/postgresql/<version>/bin/postgres`).
fn postgres_version() -> String {
    let mut versions: Vec<(u32, String)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("bin/postgres").is_file())
        .filter_map(|e| {
            let v = e.file_name().into_string().ok()?;
            Some((v.split('.').next()?.parse().ok()?, v))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, v)| v)
        .expect("no PostgreSQL server in /usr/lib/postgresql: run tests/setup.sh")
}

/// Drops the test databases whose process is gone (a test run that was killed).
fn drop_stale_databases() {
    let Ok(out) = output_with_deadline(
        pg_tool("psql")
            .args(["-X", "-q", "-t", "-A", "-d", "postgres", "-c"])
            .arg(format!(
                "SELECT datname FROM pg_database WHERE datname LIKE '{}%'",
                DB_PREFIX.replace('_', "\\_")
            )),
        PG_DEADLINE,
    ) else {
        return;
    };
    for name in String::from_utf8_lossy(&out.stdout).lines() {
        let pid = name
            .strip_prefix(DB_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            drop_database(name);
        }
    }
}

/// Python from BuildGrid's venv (its protos and grpc are importable there).
pub fn venv_python() -> PathBuf {
    bgd_path().with_file_name("python")
}

/// Runs the Python `script` (which defines `main()`) with `args` in BuildGrid's venv, within
/// `limit`. The interpreter leaves with `os._exit` after `main` (a gRPC channel still open can
/// keep Python from exiting); an exception prints its traceback and exits 1. Panics if it
/// cannot start or times out.
pub fn run_python(script: &str, args: &[&str], limit: Duration) -> Output {
    let program = format!(
        "{script}\nimport os as _os, sys as _sys, traceback as _tb\ntry:\n    main()\n    _code = 0\nexcept BaseException:\n    _tb.print_exc()\n    _code = 1\n_sys.stdout.flush()\n_sys.stderr.flush()\n_os._exit(_code)\n"
    );
    bounded(
        Command::new(venv_python())
            .arg("-c")
            .arg(program)
            .args(args),
        limit,
    )
}

/// How long one PostgreSQL client tool may take.
const PG_DEADLINE: Duration = Duration::from_secs(60);

/// Runs `cmd` to completion within `limit`; panics (with what it printed) if it cannot be
/// started or is still running then (it is killed).
fn bounded(cmd: &mut Command, limit: Duration) -> Output {
    output_with_deadline(cmd, limit).unwrap_or_else(|timed_out| panic!("{timed_out}"))
}

fn output_text(out: &Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Speaks REAPI and the Remote Workers API to a server with BuildGrid's own Python protos:
    /// capabilities, an Execute queued before any bot exists, a bot that gets it as a lease in
    /// its CreateBotSession answer and completes it, and the operation's result. Every call has
    /// a deadline; the result is read by polling GetOperation (an update the Execute stream
    /// missed cannot stall it).
    const PROBE: &str = r#"
import hashlib, sys, time, grpc
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re, remote_execution_pb2_grpc as re_grpc
from buildgrid._protos.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc
from buildgrid._protos.google.longrunning import operations_pb2, operations_pb2_grpc
def main():
    ch = grpc.insecure_channel("127.0.0.1:" + sys.argv[1])
    caps = re_grpc.CapabilitiesStub(ch).GetCapabilities(re.GetCapabilitiesRequest(), timeout=10)
    assert caps.execution_capabilities.exec_enabled, caps
    def digest(b): return re.Digest(hash=hashlib.sha256(b).hexdigest(), size_bytes=len(b))
    platform = re.Platform(properties=[re.Platform.Property(name="ISA", value="x86-64"), re.Platform.Property(name="OSFamily", value="linux")])
    command = re.Command(arguments=["/bin/true"], platform=platform).SerializeToString()
    root = re.Directory().SerializeToString()
    action = re.Action(command_digest=digest(command), input_root_digest=digest(root), platform=platform).SerializeToString()
    re_grpc.ContentAddressableStorageStub(ch).BatchUpdateBlobs(re.BatchUpdateBlobsRequest(
        requests=[re.BatchUpdateBlobsRequest.Request(digest=digest(b), data=b) for b in (command, root, action)]), timeout=10)
    ops = re_grpc.ExecutionStub(ch).Execute(re.ExecuteRequest(action_digest=digest(action), skip_cache_lookup=True), timeout=30)
    # The stream stays open (a watcher) but is not read: the result is polled below.
    name = next(ops).name
    print("operation", name)
    bots = bots_pb2_grpc.BotsStub(ch)
    session = bots_pb2.BotSession(bot_id="probe-bot", status=bots_pb2.OK)
    device = session.worker.devices.add(handle="probe")
    device.properties.add(key="OSFamily", value="linux")
    device.properties.add(key="ISA", value="x86-64")
    t = time.time()
    session = bots.CreateBotSession(bots_pb2.CreateBotSessionRequest(parent="", bot_session=session), timeout=10)
    assert session.name, session
    # The job was queued before the bot existed: the assigner hands it over within a few
    # of its rounds, in the CreateBotSession answer or in a following UpdateBotSession.
    while not session.leases and time.time() - t < 30:
        session = bots.UpdateBotSession(bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session), timeout=5)
    assert len(session.leases) == 1, session
    lease = session.leases[0]
    assert lease.state == bots_pb2.LeaseState.ACTIVE and lease.payload.Is(re.Action.DESCRIPTOR), lease
    print("bot session %s got lease %s (%s) in %.2f s" % (session.name, lease.id, lease.payload.type_url, time.time() - t))
    lease.state = bots_pb2.LeaseState.COMPLETED
    lease.result.Pack(re.ActionResult(exit_code=0))
    session = bots.UpdateBotSession(bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session), timeout=10)
    operations = operations_pb2_grpc.OperationsStub(ch)
    deadline = time.time() + 60
    while True:
        op = operations.GetOperation(operations_pb2.GetOperationRequest(name=name), timeout=10)
        if op.done:
            break
        assert time.time() < deadline, "operation %s not done 60 s after its lease completed: %s" % (name, op)
        time.sleep(0.1)
    response = re.ExecuteResponse()
    op.response.Unpack(response)
    assert response.status.code == 0 and response.result.exit_code == 0, response
    print("operation done")
"#;

    #[test]
    fn two_buildgrid_exec_servers_schedule_an_action_to_a_bot_each() {
        let python = venv_python();
        assert!(
            python.exists(),
            "no {} next to bgd: this test needs BuildGrid's venv",
            python.display()
        );
        std::thread::scope(|s| {
            let servers: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        let t0 = Instant::now();
                        let server = BuildGridExec::start();
                        eprintln!("{} up in {:?}", server.url, t0.elapsed());
                        server
                    })
                })
                .collect();
            let servers: Vec<_> = servers.into_iter().map(|h| h.join().unwrap()).collect();
            assert_ne!(servers[0].port, servers[1].port);
            assert_ne!(servers[0].database, servers[1].database);
            for server in &servers {
                assert!(server.url.starts_with("grpc://127.0.0.1:"));
                // The probe bounds each of its calls; this bounds the interpreter.
                let out = run_python(PROBE, &[&server.port.to_string()], Duration::from_secs(180));
                assert!(
                    out.status.success(),
                    "{}\nBuildGrid log:\n{}",
                    output_text(&out),
                    server.log()
                );
                eprint!("{}", String::from_utf8_lossy(&out.stdout));
            }
        });
    }
}
