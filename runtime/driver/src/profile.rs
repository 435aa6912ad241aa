//! The build's timeline as a Chrome trace-event file (loads in Perfetto and
//! chrome://tracing): the driver's phases on one track, every action on the track of the
//! worker slot that ran it, and the critical path (the chain of dependencies that bounded
//! the build's wall time) marked and repeated on a track of its own.

use std::collections::HashMap;
use std::sync::Mutex;

use std::borrow::Cow;
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
    /// The label (`//package:name`) and the detail apart.
    label: String,
    detail: Option<String>,
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
            // An action the up-to-date snapshot answered took no time: after an edit of a
            // large graph they are nearly all of it, and writing a slice for each cost ~10 ms
            // per 10,000 actions.
            && !matches!(phases.as_slice(), [p] if p.name == wbuild_sched::KNOWN_PHASE)
        {
            let name = match detail {
                Some(d) => format!("{label} {d}"),
                None => label.clone(),
            };
            self.ran.lock().expect("profile").push(Ran {
                name,
                label: label.clone(),
                detail: detail.clone(),
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

/// The trace file: Chrome's trace-event format (JSON object form).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Trace<'a> {
    trace_events: Vec<TraceEvent<'a>>,
    display_time_unit: &'static str,
    other_data: OtherData<'a>,
}

#[derive(serde::Serialize)]
struct OtherData<'a> {
    critical_path: &'a [String],
}

/// One trace event: a metadata event (`ph` "M") or a complete slice (`ph` "X").
#[derive(serde::Serialize)]
struct TraceEvent<'a> {
    name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cat: Option<&'a str>,
    ph: &'static str,
    pid: u32,
    tid: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dur: Option<u64>,
    #[serde(skip_serializing_if = "Args::is_empty")]
    args: Args<'a>,
}

/// The `args` of an event (only the fields it has).
#[derive(Clone, Default, serde::Serialize)]
struct Args<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action_digest: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    critical_path: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'a str>,
}

impl Args<'_> {
    fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.status.is_none()
            && self.action_digest.is_none()
            && self.critical_path.is_none()
            && self.action.is_none()
    }
}

/// A complete slice (`ph` "X").
fn span<'a>(
    name: &'a str,
    cat: &'a str,
    tid: u64,
    ts: u64,
    dur: u64,
    args: Args<'a>,
) -> TraceEvent<'a> {
    TraceEvent {
        name: Cow::Borrowed(name),
        cat: Some(cat),
        ph: "X",
        pid: 1,
        tid,
        ts: Some(ts),
        dur: Some(dur),
        args,
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
        // Each action that ran, by its label's parts and detail (borrowed: naming every
        // action of a 10,000-action graph to find the few that ran cost milliseconds).
        fn key(r: &Ran) -> Option<((&str, &str), Option<&str>)> {
            let (package, name) = r.label.strip_prefix("//")?.split_once(':')?;
            Some(((package, name), r.detail.as_deref()))
        }
        let by_key: HashMap<((&str, &str), Option<&str>), usize> = ran
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((key(r)?, i)))
            .collect();
        // Where each of them sits in the graphs (graph, action), and the reverse.
        let mut place: HashMap<(usize, usize), usize> = HashMap::new();
        let mut first_place: HashMap<usize, (usize, usize)> = HashMap::new();
        if !by_key.is_empty() {
            for (gi, g) in graphs.iter().enumerate() {
                for (ai, a) in g.actions.iter().enumerate() {
                    let k = (
                        (a.label.package.as_str(), a.label.name.as_str()),
                        a.detail.as_deref(),
                    );
                    if let Some(&r) = by_key.get(&k) {
                        place.insert((gi, ai), r);
                        first_place.entry(r).or_insert((gi, ai));
                    }
                }
            }
        }
        let end = |r: usize| ran[r].start_us + ran[r].duration_us;
        let Some(last) = (0..ran.len()).max_by_key(|&r| end(r)) else {
            return Vec::new();
        };
        let mut path = vec![ran[last].name.clone()];
        let mut seen: std::collections::HashSet<usize> = [last].into_iter().collect();
        let mut at = first_place.get(&last).copied();
        while let Some((gi, ai)) = at {
            let Some((prev, prev_at)) = graphs[gi].actions[ai]
                .deps
                .iter()
                .filter_map(|&d| place.get(&(gi, d)).map(|&r| (r, (gi, d))))
                .max_by_key(|&(r, _)| end(r))
            else {
                break;
            };
            if !seen.insert(prev) {
                break;
            }
            path.push(ran[prev].name.clone());
            at = Some(prev_at);
        }
        path.reverse();
        path
    }

    /// The trace (JSON): `phases` of the driver and the actions recorded, the critical path
    /// through `graphs` marked. Written with typed events, no intermediate JSON tree: a
    /// build of 10,000 actions has some 30,000 of them, written after every build.
    pub fn trace(&self, command: &str, phases: &[Span], graphs: &[&ActionGraph]) -> Vec<u8> {
        let ran = self.ran.lock().expect("profile");
        let critical = Self::critical_path(&ran, graphs);
        let on_critical: std::collections::HashSet<&str> =
            critical.iter().map(String::as_str).collect();
        let process = format!("wbuild {command}");
        let mut events: Vec<TraceEvent<'_>> = Vec::with_capacity(8 + ran.len() * 3);
        let meta = |name: &'static str, tid: u64, label: String| TraceEvent {
            name: Cow::Borrowed(name),
            cat: None,
            ph: "M",
            pid: 1,
            tid,
            ts: None,
            dur: None,
            args: Args {
                name: Some(label),
                ..Args::default()
            },
        };
        events.push(meta("process_name", PHASES, process));
        events.push(meta("thread_name", PHASES, "phases".to_owned()));
        events.push(meta("thread_name", CRITICAL, "critical path".to_owned()));
        let mut slots: Vec<usize> = ran.iter().map(|r| r.slot).collect();
        slots.sort_unstable();
        slots.dedup();
        for s in slots {
            events.push(meta(
                "thread_name",
                FIRST_SLOT + s as u64,
                format!("slot {s}"),
            ));
        }
        for p in phases {
            events.push(span(
                &p.name,
                "phase",
                PHASES,
                p.start_us,
                p.duration_us,
                Args::default(),
            ));
        }
        for r in ran.iter() {
            let on_path = on_critical.contains(r.name.as_str());
            let args = Args {
                status: Some(r.status),
                action_digest: Some(r.digest.as_deref()),
                critical_path: Some(on_path),
                ..Args::default()
            };
            let tid = FIRST_SLOT + r.slot as u64;
            events.push(span(
                &r.name,
                &r.mnemonic,
                tid,
                r.start_us,
                r.duration_us,
                args.clone(),
            ));
            for p in &r.phases {
                let args = Args {
                    action: Some(&r.name),
                    ..Args::default()
                };
                events.push(span(
                    p.name,
                    "action_phase",
                    tid,
                    p.start_us,
                    p.duration_us,
                    args,
                ));
            }
            if on_path {
                events.push(span(
                    &r.name,
                    "critical_path",
                    CRITICAL,
                    r.start_us,
                    r.duration_us,
                    args,
                ));
            }
        }
        let trace = Trace {
            trace_events: events,
            display_time_unit: "ms",
            other_data: OtherData {
                critical_path: &critical,
            },
        };
        serde_json::to_vec(&trace).expect("a trace serialises")
    }
}
