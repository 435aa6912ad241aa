//! The build's timeline as a Chrome trace-event file (loads in Perfetto and
//! chrome://tracing): the driver's phases on one track, every action on the track of the
//! worker slot that ran it, and the critical path (the chain of dependencies that bounded
//! the build's wall time) marked and repeated on a track of its own.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Value, json};
use wbuild_graph::ActionGraph;
use wbuild_sched::{Event, EventSink};

/// One timed span (microseconds since the Unix epoch, and long).
#[derive(Clone, Debug)]
pub struct Span {
    pub name: String,
    pub start_us: u64,
    pub duration_us: u64,
}

/// An action as it ran.
#[derive(Clone, Debug)]
struct Ran {
    /// `ActionNode::name()`: the label, then the detail.
    name: String,
    mnemonic: String,
    status: &'static str,
    digest: Option<String>,
    start_us: u64,
    duration_us: u64,
    slot: usize,
    /// Its phases (key, lookup, staging, execution, ...), nested in its slice.
    phases: Vec<wbuild_sched::Phase>,
}

/// Forwards every event to the frontend's sink and keeps the actions' timings.
pub struct Recorder<'a> {
    inner: &'a dyn EventSink,
    ran: Mutex<Vec<Ran>>,
}

impl<'a> Recorder<'a> {
    pub fn new(inner: &'a dyn EventSink) -> Recorder<'a> {
        Recorder {
            inner,
            ran: Mutex::new(Vec::new()),
        }
    }
}

impl EventSink for Recorder<'_> {
    fn event(&self, e: &Event) {
        if let Event::Action {
            label,
            mnemonic,
            detail,
            status,
            start_us,
            duration_us,
            slot,
            action_digest,
            phases,
            ..
        } = e
        {
            let name = match detail {
                Some(d) => format!("{label} {d}"),
                None => label.clone(),
            };
            self.ran.lock().expect("profile").push(Ran {
                name,
                mnemonic: mnemonic.clone(),
                status: status.as_str(),
                digest: action_digest.clone(),
                start_us: *start_us,
                duration_us: *duration_us,
                slot: *slot,
                phases: phases.clone(),
            });
        }
        self.inner.event(e);
    }
}

/// Track (thread) ids: the phases, the critical path, then one per worker slot.
const PHASES: u64 = 0;
const CRITICAL: u64 = 1;
const FIRST_SLOT: u64 = 10;

impl Recorder<'_> {
    /// The names of the critical path's actions, first to last: from the action that
    /// finished last, back through the dependency (in `graphs`) that finished last.
    fn critical_path(ran: &[Ran], graphs: &[&ActionGraph]) -> Vec<String> {
        let end: HashMap<&str, u64> = ran
            .iter()
            .map(|r| (r.name.as_str(), r.start_us + r.duration_us))
            .collect();
        let mut deps: HashMap<String, Vec<String>> = HashMap::new();
        for g in graphs {
            for a in &g.actions {
                let names = a.deps.iter().map(|&d| g.actions[d].name()).collect();
                deps.insert(a.name(), names);
            }
        }
        let Some(mut at) = ran
            .iter()
            .max_by_key(|r| r.start_us + r.duration_us)
            .map(|r| r.name.clone())
        else {
            return Vec::new();
        };
        let mut path = vec![at.clone()];
        let mut seen: std::collections::HashSet<String> = path.iter().cloned().collect();
        while let Some(prev) = deps.get(&at).and_then(|ds| {
            ds.iter()
                .filter(|d| end.contains_key(d.as_str()))
                .max_by_key(|d| end[d.as_str()])
        }) {
            if !seen.insert(prev.clone()) {
                break;
            }
            at = prev.clone();
            path.push(at.clone());
        }
        path.reverse();
        path
    }

    /// The trace: `phases` of the driver and the actions recorded, the critical path through
    /// `graphs` marked.
    pub fn trace(&self, command: &str, phases: &[Span], graphs: &[&ActionGraph]) -> Value {
        let ran = self.ran.lock().expect("profile").clone();
        let critical = Self::critical_path(&ran, graphs);
        let on_critical: std::collections::HashSet<&str> =
            critical.iter().map(String::as_str).collect();
        let mut events = vec![
            json!({"name": "process_name", "ph": "M", "pid": 1, "tid": PHASES,
                   "args": {"name": format!("wbuild {command}")}}),
            json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": PHASES,
                   "args": {"name": "phases"}}),
            json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": CRITICAL,
                   "args": {"name": "critical path"}}),
        ];
        let mut slots: Vec<usize> = ran.iter().map(|r| r.slot).collect();
        slots.sort_unstable();
        slots.dedup();
        for s in slots {
            events.push(json!({"name": "thread_name", "ph": "M", "pid": 1,
                               "tid": FIRST_SLOT + s as u64,
                               "args": {"name": format!("slot {s}")}}));
        }
        for p in phases {
            events.push(json!({"name": p.name, "cat": "phase", "ph": "X", "pid": 1,
                               "tid": PHASES, "ts": p.start_us, "dur": p.duration_us}));
        }
        for r in &ran {
            let on_path = on_critical.contains(r.name.as_str());
            let args = json!({"status": r.status, "action_digest": r.digest,
                              "critical_path": on_path});
            events.push(
                json!({"name": r.name, "cat": r.mnemonic, "ph": "X", "pid": 1,
                               "tid": FIRST_SLOT + r.slot as u64, "ts": r.start_us,
                               "dur": r.duration_us, "args": args}),
            );
            for p in &r.phases {
                events.push(
                    json!({"name": p.name, "cat": "action_phase", "ph": "X", "pid": 1,
                                   "tid": FIRST_SLOT + r.slot as u64, "ts": p.start_us,
                                   "dur": p.duration_us, "args": {"action": r.name}}),
                );
            }
            if on_path {
                events.push(json!({"name": r.name, "cat": "critical_path", "ph": "X",
                                   "pid": 1, "tid": CRITICAL, "ts": r.start_us,
                                   "dur": r.duration_us, "args": args}));
            }
        }
        json!({"traceEvents": events, "displayTimeUnit": "ms",
               "otherData": {"critical_path": critical}})
    }
}
