//! Running a process the tests wait for, with a deadline: nothing a test starts may hang the
//! test suite. The process gets its own process group, so on the deadline everything it
//! started (a sandbox, a server, a Python interpreter's helper threads) is killed with it.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one `wbuild` command of an end-to-end test may take before it is killed:
/// `$WBUILD_TEST_DEADLINE_SECS`, default 600 s (the slowest commands of the suite take well
/// under a minute; the deadline is a way out of a hang, not a speed check).
pub fn default_deadline() -> Duration {
    let secs = std::env::var("WBUILD_TEST_DEADLINE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    Duration::from_secs(secs)
}

/// A process that did not finish in time (it and its process group were killed).
#[derive(Debug)]
pub struct TimedOut {
    /// The program and its arguments.
    pub command: String,
    pub limit: Duration,
    /// What it printed until it was killed.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` did not finish within {:?} and was killed\n--- stdout so far\n{}\n--- stderr so far\n{}",
            self.command,
            self.limit,
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        )
    }
}

/// Like [`Command::output`] (stdin is `/dev/null`, stdout and stderr captured), but the
/// process and its process group are killed after `limit`.
pub fn output_with_deadline(cmd: &mut Command, limit: Duration) -> Result<Output, TimedOut> {
    let command = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_until(&mut child, Instant::now() + limit);
    let take = |(buf, done): (Arc<Mutex<Vec<u8>>>, std::sync::mpsc::Receiver<()>)| {
        // A grandchild outside the group may hold the pipe open: wait for the reader a
        // little, then take what it has.
        let _ = done.recv_timeout(Duration::from_secs(5));
        std::mem::take(&mut *buf.lock().unwrap_or_else(|e| e.into_inner()))
    };
    let (stdout, stderr) = (take(stdout), take(stderr));
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(TimedOut {
            command,
            limit,
            stdout,
            stderr,
        }),
    }
}

/// Waits for `child` until `deadline`; past it kills its process group and returns `None`.
pub fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => panic!("waiting for process {}: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            kill_group(child);
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL to the process group led by `child` (spawned with `process_group(0)`).
fn kill_group(child: &Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

type Drained = (Arc<Mutex<Vec<u8>>>, std::sync::mpsc::Receiver<()>);

fn drain(pipe: Option<impl Read + Send + 'static>) -> Drained {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(mut pipe) = pipe {
        let buf = Arc::clone(&buf);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&chunk[..n]),
                }
            }
            let _ = tx.send(());
        });
    } else {
        let _ = tx.send(());
    }
    (buf, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_past_its_deadline_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("grandchild-ran");
        // The grandchild would create the marker after 3 s unless it is killed with the group.
        let script = format!(
            "echo started; (sleep 3; touch {}) & sleep 100",
            marker.display()
        );
        let err = output_with_deadline(
            Command::new("sh").args(["-c", &script]),
            Duration::from_millis(500),
        )
        .expect_err("sleep 100 must time out");
        assert_eq!(String::from_utf8_lossy(&err.stdout), "started\n");
        assert!(err.to_string().contains("did not finish within"), "{err}");
        std::thread::sleep(Duration::from_secs(4));
        assert!(!marker.exists(), "the grandchild outlived the deadline");
    }

    #[test]
    fn a_process_within_its_deadline_gives_its_output() {
        let out = output_with_deadline(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }
}
