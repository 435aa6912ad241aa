//! Observed-input keys (two-phase lookup). The full action key covers every declared input;
//! an action whose reads are known exactly also gets:
//! - a **weak key**: what is known before it runs: command, environment, outputs, platform,
//!   execution settings, timeout, the tool module (WASI) or, for a native compile, the names
//!   of its declared inputs and the digest of the source it cannot avoid reading;
//! - a **path set** recorded by each run: every path it read, stat'ed, listed or probed and
//!   found missing (WASI: the executor's access log; a sandboxed native action: the
//!   sandbox's observed accesses; both exact), or, under `--sandbox=unobserved`, the
//!   compiler's depfile (a native `CcCompile`: complete for the headers the sandbox shows,
//!   and the header names are in the weak key, so a new header that could shadow another
//!   changes the weak key);
//! - a **strong key**: the weak key plus the state (digest, absence, listing) of every path of
//!   a path set in the input root the action would see now.
//!
//! Lookup after a miss of the full key: weak key -> recorded path sets -> strong keys -> the
//! action whose result answers one. The action cache stays plain REAPI entries; these rows
//! are the store's own index (`Store::path_sets`, `Store::observed_get`).
//!
//! Every run also leaves a key manifest (what its key was made of, and why it ran), which
//! `wbuild why` prints.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use wbuild_exec_wasi::{AccessKind, AccessLog};
use wbuild_graph::{ActionNode, Exec};
use wbuild_store::{Digest, DigestFunction, Hasher, reapi};

use crate::finish::Finished;
use crate::keys::Prepared;
use crate::{Options, SchedError, Scheduler};

/// Most paths a path set may hold; a run that observed more keeps only its full key.
pub const MAX_PATH_SET: usize = 100_000;
/// Longest path a path set may hold.
const MAX_PATH_LEN: usize = 4096;
/// Where the native sandbox puts the workspace (a depfile may name inputs under it).
const NATIVE_WORKDIR: &str = "/work/";
/// Changes listed in an explanation before the rest are counted.
const SHOWN_CHANGES: usize = 5;
/// Most runs in a row a native action may run unobserved (see [`Scheduler::elide`]); the
/// next one is observed again, so a path set that no longer fits is replaced within this
/// many runs.
pub const UNOBSERVED_RUNS: u32 = 7;

/// How an action's reads are known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A WASI action, or a sandboxed native one: its observed access log.
    Observed,
    /// A native compile: its depfile (an output) and the source it compiles.
    Depfile { depfile: String, source: String },
}

/// The mode of `action`, if its reads are known exactly (`observed`: a native action runs
/// observed).
pub(crate) fn mode(action: &ActionNode, observed: bool) -> Option<Mode> {
    match &action.exec {
        Exec::Wasi(_) => Some(Mode::Observed),
        Exec::Native if observed => Some(Mode::Observed),
        Exec::Native if action.mnemonic == "CcCompile" && action.wasi_tools.is_empty() => {
            let source = action.detail.clone()?;
            let depfile = action.outputs.iter().find(|o| o.ends_with(".d"))?.clone();
            action
                .inputs
                .contains(&source)
                .then_some(Mode::Depfile { depfile, source })
        }
        Exec::Native | Exec::Archive => None,
    }
}

/// What an action's key is made of besides its inputs, each part as a digest (hex) or value.
#[derive(Clone, Debug)]
pub(crate) struct Weak {
    /// The weak key (only for an action with a [`Mode`]).
    pub(crate) key: Option<Digest>,
    pub(crate) mode: Option<Mode>,
    pub(crate) parts: Vec<(String, String)>,
}

fn hex_of(f: DigestFunction, bytes: &[u8]) -> String {
    Digest::of(f, bytes).hex()
}

fn joined<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::new();
    for s in items {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    out
}

/// The weak key of an action whose reads are known as `mode` says (none: only the parts):
/// `command`, `action` (salt, timeout, platform) and its staged `files`; `module` for a WASI
/// action.
pub(crate) fn weak_key(
    f: DigestFunction,
    mode: Option<Mode>,
    command: &reapi::Command,
    action: &reapi::Action,
    files: &BTreeMap<String, Digest>,
    executables: &HashSet<String>,
    module: Option<&Digest>,
) -> Weak {
    use prost::Message;
    let env: Vec<String> = command
        .environment_variables
        .iter()
        .map(|v| format!("{}={}", v.name, v.value))
        .collect();
    let mut parts = vec![
        (
            "argv".to_owned(),
            hex_of(f, &joined(command.arguments.iter().map(String::as_str))),
        ),
        (
            "environment".to_owned(),
            hex_of(f, &joined(env.iter().map(String::as_str))),
        ),
        (
            "outputs".to_owned(),
            hex_of(f, &joined(command.output_paths.iter().map(String::as_str))),
        ),
        (
            "platform".to_owned(),
            hex_of(
                f,
                &action
                    .platform
                    .as_ref()
                    .map(|p| p.encode_to_vec())
                    .unwrap_or_default(),
            ),
        ),
        ("execution settings".to_owned(), hex_of(f, &action.salt)),
        (
            "timeout".to_owned(),
            action.timeout.as_ref().map_or(0, |t| t.seconds).to_string(),
        ),
    ];
    if let Some(m) = module {
        parts.push(("tool module".to_owned(), m.hex()));
    }
    let mut execs: Vec<&str> = executables.iter().map(String::as_str).collect();
    execs.sort_unstable();
    parts.push(("executable inputs".to_owned(), hex_of(f, &joined(execs))));
    if let Some(Mode::Depfile { source, .. }) = &mode {
        parts.push((
            "declared input names".to_owned(),
            hex_of(f, &joined(files.keys().map(String::as_str))),
        ));
        parts.push((
            format!("source {source}"),
            files.get(source).map_or("-".to_owned(), Digest::hex),
        ));
    }
    let key = mode.as_ref().map(|m| {
        let mut text = String::from("wbuild-weak/1\n");
        text.push_str(match m {
            Mode::Observed => "observed\n",
            Mode::Depfile { .. } => "depfile\n",
        });
        for (k, v) in &parts {
            text.push_str(k);
            text.push('=');
            text.push_str(v);
            text.push('\n');
        }
        Digest::of(f, text.as_bytes())
    });
    Weak { key, mode, parts }
}

/// The seed of a WASI guest's random bytes: BLAKE3 of what its weak key holds that does not
/// depend on the digest function (argv, environment, outputs, platform, settings, timeout),
/// so a guest sees the same bytes whether it runs here or on a worker, under BLAKE3 or
/// SHA-256 keys, and whatever the inputs it did not read (an answer through a path set is
/// then the bytes a run gives).
pub(crate) fn guest_seed(command: &reapi::Command, action: &reapi::Action) -> [u8; 32] {
    use prost::Message;
    let mut h = blake3::Hasher::new();
    h.update(b"wbuild-seed/1\0");
    let mut field = |bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(&joined(command.arguments.iter().map(String::as_str)));
    for v in &command.environment_variables {
        field(v.name.as_bytes());
        field(v.value.as_bytes());
    }
    field(&joined(command.output_paths.iter().map(String::as_str)));
    field(
        &action
            .platform
            .as_ref()
            .map(|p| p.encode_to_vec())
            .unwrap_or_default(),
    );
    field(&action.salt);
    field(
        &action
            .timeout
            .as_ref()
            .map_or(0, |t| t.seconds)
            .to_le_bytes(),
    );
    *h.finalize().as_bytes()
}

/// What a path-set entry depends on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Probe {
    /// The bytes of a file (or that a directory is there): read or stat'ed.
    Content,
    /// The names in a directory.
    Listing,
    /// Whether anything is there (probed and found missing).
    Existence,
}

impl Probe {
    fn tag(self) -> u8 {
        match self {
            Probe::Content => b'c',
            Probe::Listing => b'l',
            Probe::Existence => b'e',
        }
    }

    fn from_tag(t: u8) -> Option<Probe> {
        Some(match t {
            b'c' => Probe::Content,
            b'l' => Probe::Listing,
            b'e' => Probe::Existence,
            _ => return None,
        })
    }

    fn word(self) -> &'static str {
        match self {
            Probe::Content => "read",
            Probe::Listing => "listed",
            Probe::Existence => "probed",
        }
    }
}

/// The paths one run depended on, sorted (workspace-relative, normalised; "" is the root).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PathSet(pub(crate) Vec<(Probe, String)>);

/// Why a run's path set was not recorded (the action keeps its full key only).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    TooMany(usize),
    TooLong(String),
    Unreadable(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::TooMany(n) => write!(
                f,
                "it observed {n} paths, more than the {MAX_PATH_SET} an observed-input key may hold"
            ),
            Refused::TooLong(p) => write!(
                f,
                "it observed a path of {} bytes ({}...), longer than {MAX_PATH_LEN}",
                p.len(),
                p.chars().take(40).collect::<String>()
            ),
            Refused::Unreadable(why) => write!(f, "{why}"),
        }
    }
}

/// `path` as a normalised workspace-relative path ("" for the root), or `None` if it is
/// absolute (the private `/tmp`, the system) or climbs above the root: the sandbox shows
/// nothing there, so such a path's state never changes and it does not enter a path set.
pub(crate) fn normalise(path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

impl PathSet {
    fn from_entries(entries: BTreeSet<(Probe, String)>) -> Result<PathSet, Refused> {
        if entries.len() > MAX_PATH_SET {
            return Err(Refused::TooMany(entries.len()));
        }
        if let Some((_, p)) = entries.iter().find(|(_, p)| p.len() > MAX_PATH_LEN) {
            return Err(Refused::TooLong(p.clone()));
        }
        Ok(PathSet(entries.into_iter().collect()))
    }

    /// From a WASI action's access log: reads and stats, listings, missing probes.
    pub(crate) fn from_log(log: &AccessLog) -> Result<PathSet, Refused> {
        let mut entries = BTreeSet::new();
        for a in &log.accesses {
            let probe = match a.kind {
                AccessKind::Read | AccessKind::Stat => Probe::Content,
                AccessKind::List => Probe::Listing,
                AccessKind::Missing => Probe::Existence,
                AccessKind::Write | AccessKind::Denied => continue,
            };
            if let Some(p) = normalise(&a.path) {
                entries.insert((probe, p));
            }
            if entries.len() > MAX_PATH_SET {
                return Err(Refused::TooMany(log.accesses.len()));
            }
        }
        PathSet::from_entries(entries)
    }

    /// From a compiler's depfile: every prerequisite inside the workspace (system headers
    /// are the toolchain's, keyed by its identity).
    pub(crate) fn from_depfile(text: &str) -> Result<PathSet, Refused> {
        let mut entries = BTreeSet::new();
        for dep in depfile_prerequisites(text) {
            let dep = dep.strip_prefix(NATIVE_WORKDIR).unwrap_or(&dep);
            if let Some(p) = normalise(dep)
                && !p.is_empty()
            {
                entries.insert((Probe::Content, p));
            }
            if entries.len() > MAX_PATH_SET {
                return Err(Refused::TooMany(entries.len()));
            }
        }
        PathSet::from_entries(entries)
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (probe, path) in &self.0 {
            out.push(probe.tag());
            out.extend_from_slice(path.as_bytes());
            out.push(0);
        }
        out
    }

    /// A stored path set, or `None` if it is not one this version wrote (a damaged or
    /// foreign row is skipped, never trusted).
    pub(crate) fn decode(bytes: &[u8]) -> Option<PathSet> {
        let mut entries = Vec::new();
        if bytes.is_empty() {
            return Some(PathSet(entries));
        }
        let body = bytes.strip_suffix(&[0])?;
        for item in body.split(|b| *b == 0) {
            let (tag, path) = item.split_first()?;
            let path = std::str::from_utf8(path).ok()?;
            if normalise(path).as_deref() != Some(path) || path.len() > MAX_PATH_LEN {
                return None;
            }
            entries.push((Probe::from_tag(*tag)?, path.to_owned()));
            if entries.len() > MAX_PATH_SET {
                return None;
            }
        }
        Some(PathSet(entries))
    }
}

/// The prerequisites of every rule of a Make-syntax depfile, unescaped (`\ `, `\#`, `$$`).
pub(crate) fn depfile_prerequisites(text: &str) -> Vec<String> {
    let joined = text.replace("\\\r\n", " ").replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        // The targets end at the first unescaped ':' followed by whitespace or the end.
        let bytes = line.as_bytes();
        let mut colon = None;
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 1,
                b':' if bytes.get(i + 1).is_none_or(|c| c.is_ascii_whitespace()) => {
                    colon = Some(i);
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        let Some(colon) = colon else { continue };
        let mut word = String::new();
        let mut chars = line[colon + 1..].chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if matches!(chars.peek(), Some(' ') | Some('#') | Some('\\')) => {
                    word.push(chars.next().expect("peeked"));
                }
                '$' if chars.peek() == Some(&'$') => {
                    chars.next();
                    word.push('$');
                }
                c if c.is_whitespace() => {
                    if !word.is_empty() {
                        out.push(std::mem::take(&mut word));
                    }
                }
                c => word.push(c),
            }
        }
        if !word.is_empty() {
            out.push(word);
        }
    }
    out
}

/// The state of `path` for `probe` in an input root of `files` (`executables` marked): `f`
/// and the digest for a file's content, `d` for a directory (`d` and the digest of its
/// entries for a listing), `-` for nothing there.
pub(crate) fn state(
    f: DigestFunction,
    files: &BTreeMap<String, Digest>,
    executables: &HashSet<String>,
    probe: Probe,
    path: &str,
) -> String {
    if let Some(d) = files.get(path) {
        return match probe {
            Probe::Content => format!(
                "f {}/{}{}",
                d.hex(),
                d.size,
                if executables.contains(path) { " x" } else { "" }
            ),
            Probe::Listing | Probe::Existence => "f".to_owned(),
        };
    }
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    let mut under = files
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .peekable();
    if under.peek().is_none() {
        return if path.is_empty() { "d" } else { "-" }.to_owned();
    }
    if probe != Probe::Listing {
        return "d".to_owned();
    }
    let mut names: BTreeSet<(&str, bool)> = BTreeSet::new();
    for (k, _) in under {
        let rest = &k[prefix.len()..];
        match rest.split_once('/') {
            Some((dir, _)) => names.insert((dir, true)),
            None => names.insert((rest, false)),
        };
    }
    let mut listing = Vec::new();
    for (name, is_dir) in names {
        listing.extend_from_slice(name.as_bytes());
        listing.push(if is_dir { b'/' } else { 0 });
    }
    format!("d {}", hex_of(f, &listing))
}

/// The strong key: `weak` and the state of every path of `set` in the input root `files`.
pub(crate) fn strong_key(
    weak: &Digest,
    set: &PathSet,
    files: &BTreeMap<String, Digest>,
    executables: &HashSet<String>,
) -> Digest {
    let f = weak.function;
    let mut h = Hasher::new(f);
    h.update(b"wbuild-strong/1\n");
    h.update(weak.hex().as_bytes());
    h.update(b"\n");
    for (probe, path) in &set.0 {
        h.update(&[probe.tag()]);
        h.update(path.as_bytes());
        h.update(&[0]);
        h.update(state(f, files, executables, *probe, path).as_bytes());
        h.update(b"\n");
    }
    h.finish()
}

/// What a run's key was made of: kept per action (`Store::key_manifest`), compared with the
/// next run's to say why it ran.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct KeyManifest {
    /// The action's name (label, then detail) and mnemonic.
    pub name: String,
    pub mnemonic: String,
    /// When it ran (unix ms) and the build it ran in.
    pub ran_unix_ms: u64,
    pub build: Option<u64>,
    /// Why it ran (compared with the run before it).
    pub why: String,
    /// The weak-key parts (name, digest or value).
    pub parts: Vec<(String, String)>,
    /// Declared input names.
    pub inputs: Vec<String>,
    /// The paths the run depended on, each with how and its state then: the path set for an
    /// action with observed inputs, else every declared input.
    pub paths: Vec<(String, String, String)>,
    /// Whether `paths` is an exact path set (otherwise, declared inputs).
    pub observed: bool,
    /// How many runs in a row, this one included, ran unobserved because observing could
    /// not narrow their key (see [`UNOBSERVED_RUNS`]); 0 for an observed run.
    #[serde(default)]
    pub unobserved_runs: u32,
}

/// The key manifest of a run (`set`: its path set, if one was recorded).
pub(crate) fn manifest(
    f: DigestFunction,
    node: &ActionNode,
    weak: &Weak,
    set: Option<&PathSet>,
    files: &BTreeMap<String, Digest>,
    executables: &HashSet<String>,
) -> KeyManifest {
    let paths: Vec<(String, String, String)> = match set {
        Some(s) => {
            s.0.iter()
                .map(|(p, path)| {
                    (
                        p.word().to_owned(),
                        path.clone(),
                        state(f, files, executables, *p, path),
                    )
                })
                .collect()
        }
        None => files
            .keys()
            .map(|path| {
                (
                    Probe::Content.word().to_owned(),
                    path.clone(),
                    state(f, files, executables, Probe::Content, path),
                )
            })
            .collect(),
    };
    KeyManifest {
        name: node.name(),
        mnemonic: node.mnemonic.clone(),
        ran_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        build: None,
        why: String::new(),
        parts: weak.parts.clone(),
        inputs: files.keys().cloned().collect(),
        paths,
        observed: set.is_some(),
        unobserved_runs: 0,
    }
}

fn short(state: &str) -> String {
    match state.split_once(' ') {
        Some((kind, rest)) if kind == "f" || kind == "d" => {
            let h: String = rest.chars().take(12).collect();
            format!("{kind} {h}")
        }
        _ => state.to_owned(),
    }
}

fn describe_change(path: &str, old: &str, new: &str) -> String {
    let shown = if path.is_empty() { "." } else { path };
    match (old, new) {
        ("-", _) => format!("{shown} appeared"),
        (_, "-") => format!("{shown} disappeared"),
        (o, n) if o.starts_with("d ") && n.starts_with("d ") => {
            format!("the listing of {shown} changed")
        }
        (o, n) => format!("{shown} changed ({} -> {})", short(o), short(n)),
    }
}

/// Why an action runs now, given its last run's manifest (`None`: never ran here) and what
/// its key is made of now.
pub(crate) fn explain(
    f: DigestFunction,
    last: Option<&KeyManifest>,
    weak: &Weak,
    files: &BTreeMap<String, Digest>,
    executables: &HashSet<String>,
) -> String {
    let Some(last) = last else {
        return "no earlier run of it is recorded in this cache".to_owned();
    };
    let mut changes = Vec::new();
    let old: BTreeMap<&str, &str> = last
        .parts
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for (k, v) in &weak.parts {
        match old.get(k.as_str()) {
            Some(o) if *o == v => {}
            Some(_) if k == "declared input names" => {
                let before: BTreeSet<&str> = last.inputs.iter().map(String::as_str).collect();
                let now: BTreeSet<&str> = files.keys().map(String::as_str).collect();
                let added: Vec<&str> = now.difference(&before).copied().collect();
                let removed: Vec<&str> = before.difference(&now).copied().collect();
                let mut what = Vec::new();
                if !added.is_empty() {
                    what.push(format!("added {}", added.join(", ")));
                }
                if !removed.is_empty() {
                    what.push(format!("removed {}", removed.join(", ")));
                }
                changes.push(format!("its declared inputs changed: {}", what.join("; ")));
            }
            Some(o) => changes.push(format!("its {k} changed ({} -> {})", short(o), short(v))),
            None => changes.push(format!("its {k} is new")),
        }
    }
    if changes.is_empty() {
        for (how, path, was) in &last.paths {
            let probe = match how.as_str() {
                "listed" => Probe::Listing,
                "probed" => Probe::Existence,
                _ => Probe::Content,
            };
            let now = state(f, files, executables, probe, path);
            if now != *was {
                changes.push(describe_change(path, was, &now));
            }
        }
        if !last.observed {
            for path in files.keys() {
                if !last.paths.iter().any(|(_, p, _)| p == path) {
                    changes.push(format!("{path} is a new input"));
                }
            }
        }
    }
    if changes.is_empty() {
        return "nothing it depends on changed since its last run here; its result was not in the cache (evicted, removed, or the run before failed)".to_owned();
    }
    let n = changes.len();
    let mut text = changes
        .into_iter()
        .take(SHOWN_CHANGES)
        .collect::<Vec<_>>()
        .join("; ");
    if n > SHOWN_CHANGES {
        text.push_str(&format!("; and {} more changes", n - SHOWN_CHANGES));
    }
    text
}

/// The identity of an action across builds (its key manifest's name in the store, its
/// entry in the up-to-date snapshot): label, mnemonic, detail and the platform's output
/// directory.
pub fn identity(node: &ActionNode, out_dir: &str) -> String {
    identity_of(
        &node.label.to_string(),
        &node.mnemonic,
        node.detail.as_deref().unwrap_or(""),
        out_dir,
    )
}

/// [`identity`] from its parts.
pub(crate) fn identity_of(label: &str, mnemonic: &str, detail: &str, out_dir: &str) -> String {
    format!("{label}\0{mnemonic}\0{detail}\0{out_dir}")
}

/// What the path-set lookup after a miss of the full key found.
pub(crate) enum Lookup {
    /// An earlier run's result answers the action.
    Served(Box<Finished>),
    /// Nothing did; the most recently used path set recorded under the weak key, if any.
    Missed(Option<PathSet>),
}

impl PathSet {
    /// Whether the run that recorded this set read (or stat'ed) every one of `files`.
    fn read_all(&self, files: &BTreeMap<String, Digest>) -> bool {
        files.keys().all(|path| {
            self.0
                .binary_search_by(|(probe, p)| {
                    (*probe, p.as_str()).cmp(&(Probe::Content, path.as_str()))
                })
                .is_ok()
        })
    }
}

impl Scheduler<'_> {
    /// After a miss of the full key: the result of an earlier run whose path set has the same
    /// state now (weak key -> path sets -> strong keys), materialised, and recorded under the
    /// full key too (with the run's access log) so the next lookup is direct.
    pub(crate) fn observed_lookup(
        &self,
        action: &ActionNode,
        opts: &Options,
        prep: &Prepared,
        weak: &Weak,
    ) -> Result<Lookup, SchedError> {
        let Some(key) = &weak.key else {
            return Ok(Lookup::Missed(None));
        };
        let mut latest = None;
        for bytes in self.store.path_sets(key)? {
            let Some(set) = PathSet::decode(&bytes) else {
                continue;
            };
            let strong = strong_key(key, &set, &prep.spec.files, &prep.spec.executables);
            let entry = self.store.observed_get(&strong)?;
            if latest.is_none() {
                latest = Some(set);
            }
            let Some(entry) = entry else {
                continue;
            };
            let served = match self.store.ac_get(&entry)? {
                Some(result) => self
                    .serve_entry(action, opts, &entry, result.clone())?
                    .map(|fin| (fin, result)),
                None => None,
            };
            let Some((mut fin, result)) = served else {
                self.store.observed_remove(&strong)?;
                continue;
            };
            if entry != prep.action_digest {
                self.store
                    .ac_put(&prep.action_digest, &result, &action.label.to_string())?;
                if let Some(log) = self.store.access_log(&entry)? {
                    self.store.put_access_log(&prep.action_digest, &log)?;
                }
            }
            fin.action_digest = Some(prep.action_digest);
            return Ok(Lookup::Served(Box::new(fin)));
        }
        Ok(Lookup::Missed(latest))
    }

    /// The key manifest of the action's last run here, if one is recorded (and readable).
    pub(crate) fn last_manifest(
        &self,
        action: &ActionNode,
        opts: &Options,
    ) -> Result<Option<KeyManifest>, SchedError> {
        let id = identity(action, &opts.platform.out_dir());
        Ok(self
            .store
            .key_manifest(&id)?
            .and_then(|j| serde_json::from_str::<KeyManifest>(&j).ok()))
    }

    /// Why the action runs now: compared with `last`, the key manifest of its last run here.
    pub(crate) fn why_now(
        &self,
        last: Option<&KeyManifest>,
        prep: &Prepared,
        weak: &Weak,
    ) -> String {
        explain(
            self.store.function(),
            last,
            weak,
            &prep.spec.files,
            &prep.spec.executables,
        )
    }

    /// Whether a sandboxed native action about to run may run unobserved: `Some(n)` (the
    /// `n`th run in a row without observation) when observing it could not narrow its key.
    /// That holds for an archive or link step of the `cc_*` rules (their reads are fixed by
    /// their command: the objects and archives it names, whatever their bytes) when the run
    /// that recorded `latest`, the most recent path set under the same weak key (same
    /// command, environment, outputs, settings), read every input the action declares now:
    /// its path set then pins every declared input, as the full key does, and the sandbox
    /// shows the action nothing else. It is not a question of trust: the result of an
    /// unobserved run is kept by its full key only (no path set is recorded), which is always
    /// sound. (A script's reads can change with the bytes it reads, and what it newly looks
    /// for is what observation reports: undeclared inputs, `wbuild infer`'s ordering; so
    /// other actions are always observed.) The run is observed anyway when
    /// - a path that run probed and found missing now names a file in the workspace, or an
    ///   output of another target: a run would probe it again, and observing it names the
    ///   undeclared input (see `check_accesses`);
    /// - the last [`UNOBSERVED_RUNS`] runs were not observed: a path set that no longer fits
    ///   is replaced within that many runs.
    ///
    /// An unobserved run that fails runs again observed (`execute`), for the diagnostics.
    pub(crate) fn elide(
        &self,
        graph: &wbuild_graph::ActionGraph,
        action: &ActionNode,
        prep: &Prepared,
        weak: &Weak,
        latest: Option<&PathSet>,
        last: Option<&KeyManifest>,
    ) -> Option<u32> {
        if !matches!(
            prep.spec.kind,
            crate::spec::Kind::Native {
                observe: true,
                unsandboxed: false,
                ..
            }
        ) || weak.mode != Some(Mode::Observed)
            || !matches!(action.mnemonic.as_str(), "CcArchive" | "CcLink")
            || !action.wasi_tools.is_empty()
        {
            return None;
        }
        let set = latest?;
        if !set.read_all(&prep.spec.files) {
            return None;
        }
        let runs = last.map_or(0, |m| m.unobserved_runs);
        if runs >= UNOBSERVED_RUNS {
            return None;
        }
        let reappeared = set.0.iter().any(|(probe, path)| {
            *probe == Probe::Existence
                && !path.is_empty()
                && match graph.producers.get(path) {
                    // Its own output, looked for before it was written.
                    Some((_, label)) => *label != action.label,
                    None => std::fs::symlink_metadata(self.ws.path(path)).is_ok(),
                }
        });
        (!reappeared).then_some(runs + 1)
    }

    /// After a successful run: its path set under the weak key with the strong key it
    /// answers, and the key manifest `wbuild why` reads. A path set that cannot be recorded
    /// leaves a warning; the result is then cached by its full key only.
    pub(crate) fn record_key(
        &self,
        action: &ActionNode,
        opts: &Options,
        prep: &Prepared,
        log: Option<&AccessLog>,
        outputs: &[(String, Digest)],
        warnings: &mut Vec<String>,
    ) -> Result<(), SchedError> {
        let Some(weak) = &prep.weak else {
            return Ok(());
        };
        let f = self.store.function();
        let (files, executables) = (&prep.spec.files, &prep.spec.executables);
        let set = match &weak.mode {
            None => None,
            Some(Mode::Observed) => log.map(PathSet::from_log),
            Some(Mode::Depfile { depfile, .. }) => {
                // A depfile a build without the bytes left on the remote: no path set (the
                // result has no local entry for one to answer with).
                outputs
                    .iter()
                    .find(|(p, d)| p == depfile && self.store.has(d))
                    .map(|(_, d)| match self.store.get_bytes(d) {
                        Ok(b) => PathSet::from_depfile(&String::from_utf8_lossy(&b)),
                        Err(e) => Err(Refused::Unreadable(format!(
                            "its depfile {depfile} cannot be read: {e}"
                        ))),
                    })
            }
        };
        let set = match set {
            Some(Ok(s)) => Some(s),
            Some(Err(why)) => {
                warnings.push(format!(
                    "{} is cached by its full key only: {why}",
                    action.name()
                ));
                None
            }
            None => None,
        };
        if let (Some(key), Some(set)) = (&weak.key, &set) {
            let strong = strong_key(key, set, files, executables);
            self.store
                .observed_put(key, &set.encode(), &strong, &prep.action_digest)?;
        }
        let mut m = manifest(f, action, weak, set.as_ref(), files, executables);
        // (A run elsewhere, on a remote executor, was observed there: its path set is here.)
        m.unobserved_runs = if set.is_none() {
            prep.unobserved.unwrap_or(0)
        } else {
            0
        };
        m.build = self.build_id;
        m.why = prep.why.clone().unwrap_or_default();
        let json = serde_json::to_string(&m).expect("a key manifest serialises");
        self.store
            .key_manifest_put(&identity(action, &opts.platform.out_dir()), &json)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: DigestFunction = DigestFunction::Blake3;

    fn files(entries: &[(&str, &str)]) -> BTreeMap<String, Digest> {
        entries
            .iter()
            .map(|(p, c)| (p.to_string(), Digest::of(F, c.as_bytes())))
            .collect()
    }

    #[test]
    fn normalise_keeps_workspace_paths_and_drops_the_rest() {
        assert_eq!(normalise("a/./b/../c.h").as_deref(), Some("a/c.h"));
        assert_eq!(normalise(".").as_deref(), Some(""));
        assert_eq!(
            normalise("lib/d/../common/x.h").as_deref(),
            Some("lib/common/x.h")
        );
        assert_eq!(normalise("../lib/clang"), None);
        assert_eq!(normalise("a/../../etc/passwd"), None);
        assert_eq!(normalise("/tmp/x"), None);
        assert_eq!(normalise("/etc/shadow"), None);
    }

    #[test]
    fn depfiles_parse_with_continuations_escapes_and_phony_rules() {
        let text = "lib/_objs/m/a.o: lib/a.c lib/d/../common/x.h \\\n  /usr/include/stdio.h \\\n  my\\ dir/h$$.h /work/gen/g.h\n\nlib/common/x.h:\n";
        assert_eq!(
            depfile_prerequisites(text),
            vec![
                "lib/a.c",
                "lib/d/../common/x.h",
                "/usr/include/stdio.h",
                "my dir/h$.h",
                "/work/gen/g.h"
            ]
        );
        let set = PathSet::from_depfile(text).unwrap();
        let paths: Vec<&str> = set.0.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(
            paths,
            vec!["gen/g.h", "lib/a.c", "lib/common/x.h", "my dir/h$.h"]
        );
    }

    #[test]
    fn path_sets_round_trip_and_foreign_bytes_are_refused() {
        let mut log = AccessLog::default();
        log.record(AccessKind::Read, "lib/a.h");
        log.record(AccessKind::List, ".");
        log.record(AccessKind::Missing, "lib/b.h");
        log.record(AccessKind::Missing, "../lib/clang");
        log.record(AccessKind::Write, "out/o");
        log.record(AccessKind::Read, "/tmp/t");
        let set = PathSet::from_log(&log).unwrap();
        assert_eq!(
            set.0,
            vec![
                (Probe::Content, "lib/a.h".to_owned()),
                (Probe::Listing, "".to_owned()),
                (Probe::Existence, "lib/b.h".to_owned()),
            ]
        );
        assert_eq!(PathSet::decode(&set.encode()), Some(set));
        assert_eq!(PathSet::decode(b"c../etc/passwd\0"), None);
        assert_eq!(PathSet::decode(b"c/etc/passwd\0"), None);
        assert_eq!(PathSet::decode(b"zx\0"), None);
        assert_eq!(PathSet::decode(b"cx"), None);
    }

    #[test]
    fn huge_path_sets_are_refused() {
        let mut log = AccessLog::default();
        for i in 0..=MAX_PATH_SET {
            log.record(AccessKind::Missing, &format!("p/{i}"));
        }
        assert!(matches!(PathSet::from_log(&log), Err(Refused::TooMany(_))));
        let mut log = AccessLog::default();
        log.record(AccessKind::Read, &"x".repeat(MAX_PATH_LEN + 1));
        assert!(matches!(PathSet::from_log(&log), Err(Refused::TooLong(_))));
    }

    #[test]
    fn strong_keys_follow_exactly_the_paths_of_the_set() {
        let weak = Digest::of(F, b"weak");
        let set = PathSet(vec![
            (Probe::Content, "a.h".to_owned()),
            (Probe::Existence, "inc/b.h".to_owned()),
            (Probe::Listing, "d".to_owned()),
        ]);
        let none = HashSet::new();
        let base = files(&[("a.h", "1"), ("c.h", "1"), ("d/x", "1"), ("src.c", "s")]);
        let k = strong_key(&weak, &set, &base, &none);
        // A declared input outside the set changes nothing.
        let mut other = base.clone();
        other.insert("c.h".into(), Digest::of(F, b"2"));
        assert_eq!(strong_key(&weak, &set, &other, &none), k);
        // Content of a read file, a probed path appearing, a listing growing: all change it.
        let mut read = base.clone();
        read.insert("a.h".into(), Digest::of(F, b"2"));
        assert_ne!(strong_key(&weak, &set, &read, &none), k);
        let mut appeared = base.clone();
        appeared.insert("inc/b.h".into(), Digest::of(F, b"b"));
        assert_ne!(strong_key(&weak, &set, &appeared, &none), k);
        let mut listed = base.clone();
        listed.insert("d/y".into(), Digest::of(F, b"1"));
        assert_ne!(strong_key(&weak, &set, &listed, &none), k);
        // The content of a listed directory's file is not part of the listing.
        let mut content = base.clone();
        content.insert("d/x".into(), Digest::of(F, b"9"));
        assert_eq!(strong_key(&weak, &set, &content, &none), k);
        // Another weak key, another strong key.
        assert_ne!(strong_key(&Digest::of(F, b"w2"), &set, &base, &none), k);
    }

    #[test]
    fn explanations_name_what_changed() {
        let weak = Weak {
            key: None,
            mode: Some(Mode::Observed),
            parts: vec![("argv".into(), "aa".into())],
        };
        let set = PathSet(vec![
            (Probe::Content, "a.h".to_owned()),
            (Probe::Existence, "b.h".to_owned()),
        ]);
        let none = HashSet::new();
        let node_files = files(&[("a.h", "1")]);
        let node = ActionNode {
            label: "//p:t".parse().unwrap(),
            mnemonic: "WasiRun".into(),
            detail: None,
            exec: Exec::Native,
            argv: vec![],
            env: BTreeMap::new(),
            inputs: vec![].into(),
            outputs: vec![],
            deps: vec![],
            is_test: false,
            wasi_tools: vec![],
        };
        let last = manifest(F, &node, &weak, Some(&set), &node_files, &none);
        assert_eq!(
            explain(F, None, &weak, &node_files, &none),
            "no earlier run of it is recorded in this cache"
        );
        assert!(
            explain(F, Some(&last), &weak, &node_files, &none).starts_with("nothing it depends on")
        );
        let now = files(&[("a.h", "2"), ("b.h", "b")]);
        let why = explain(F, Some(&last), &weak, &now, &none);
        assert!(why.contains("a.h changed (f "), "{why}");
        assert!(why.contains("b.h appeared"), "{why}");
        let weak2 = Weak {
            parts: vec![("argv".into(), "bb".into())],
            ..weak
        };
        assert_eq!(
            explain(F, Some(&last), &weak2, &now, &none),
            "its argv changed (aa -> bb)"
        );
    }
}
