//! `interrupt()` kills every running sandbox in the process, so it gets its own test
//! binary (its own process) and cannot disturb the other tests.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use wbuild_exec_native::{Mount, NativeRequest, SandboxError, interrupt, run};

#[test]
fn interrupt_kills_running_sandboxes() {
    let mounts: Vec<Mount> = wbuild_exec_native::host_toolchain_mounts();
    let req = NativeRequest {
        argv: vec!["sh".into(), "-c".into(), "sleep 100 & sleep 100".into()],
        env: Vec::new(),
        mounts,
        scratch: Vec::new(),
        cwd: PathBuf::from("/"),
        source_date_epoch: 0,
        timeout: Duration::from_secs(60),
        observe: false,
    };
    let start = Instant::now();
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let req = req.clone();
            std::thread::spawn(move || run(&req))
        })
        .collect();
    // Keep interrupting until all runs returned (a run that had not started yet when
    // interrupt() was called is caught by the next call).
    std::thread::sleep(Duration::from_millis(200));
    while !handles.iter().all(|h| h.is_finished()) {
        interrupt();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "runs did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for h in handles {
        let r = h.join().unwrap();
        assert!(matches!(r, Err(SandboxError::Interrupted)), "{r:?}");
    }
    assert!(start.elapsed() < Duration::from_secs(5));
}
