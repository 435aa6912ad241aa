//! Per-action phases (key, cache lookup, staging, execution, output ingestion, upload, ...):
//! where an action's time went, for the trace (`wbuild build --profile`) and the events.
//! Each worker thread collects the phases of the action it is processing; a phase is timed
//! from [`phase`] to the drop of the guard it returns.

use std::cell::RefCell;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The one phase of an action the up-to-date snapshot answered (`Options::known`).
pub const KNOWN_PHASE: &str = "known from the up-to-date snapshot";

/// One timed phase of an action (microseconds since the Unix epoch, and long).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub start_us: u64,
    pub duration_us: u64,
}

thread_local! {
    static PHASES: RefCell<Vec<Phase>> = const { RefCell::new(Vec::new()) };
}

/// Microseconds since the Unix epoch, by the monotonic clock: the wall clock is read once,
/// and every later reading adds the monotonic time since. Every span of a build's trace (its
/// phases, its actions, their phases) is timed by it, so a span that lies within another
/// is drawn within it even if the wall clock is stepped or slewed meanwhile (a virtual
/// machine's clock was seen to), and the two were timed by different clocks.
pub fn clock_us() -> u64 {
    static BASE: std::sync::OnceLock<(Instant, u64)> = std::sync::OnceLock::new();
    let (at, unix_us) = BASE.get_or_init(|| {
        let unix_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        (Instant::now(), unix_us)
    });
    unix_us + at.elapsed().as_micros() as u64
}

/// Times a phase until dropped.
pub(crate) struct Timer {
    name: &'static str,
    start_us: u64,
    start: Instant,
}

impl Drop for Timer {
    fn drop(&mut self) {
        let duration_us = self.start.elapsed().as_micros() as u64;
        let p = Phase {
            name: self.name,
            start_us: self.start_us,
            duration_us,
        };
        PHASES.with(|v| v.borrow_mut().push(p));
    }
}

/// Start timing the phase `name` of the action this thread is processing.
pub(crate) fn phase(name: &'static str) -> Timer {
    Timer {
        name,
        start_us: clock_us(),
        start: Instant::now(),
    }
}

/// Record a phase measured elsewhere (a remote worker's timestamps).
pub(crate) fn record(name: &'static str, start_us: u64, duration_us: u64) {
    PHASES.with(|v| {
        v.borrow_mut().push(Phase {
            name,
            start_us,
            duration_us,
        })
    });
}

/// The phases recorded on this thread since the last call, in the order they ended.
pub(crate) fn take() -> Vec<Phase> {
    PHASES.with(|v| std::mem::take(&mut *v.borrow_mut()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_nest_and_are_taken_once() {
        let _ = take();
        {
            let _outer = phase("execution");
            let _inner = phase("staging");
        }
        record("remote queued", 5, 7);
        let got = take();
        let names: Vec<&str> = got.iter().map(|p| p.name).collect();
        assert_eq!(names, ["staging", "execution", "remote queued"]);
        assert!(got[1].start_us <= got[0].start_us);
        assert!(got[1].duration_us >= got[0].duration_us);
        assert!(take().is_empty());
    }
}
