//! Action keys without running anything (`wbuild aquery`): the key of each action computed
//! by the scheduler's own code path ([`Scheduler::prepare`], the one a build takes before its
//! cache lookup), and whether the local action cache holds a result a build would use.
//!
//! A generated input has a digest only once its producing action has a result: like a build,
//! [`describe_passes`] walks each pass in topological order and takes the digests of generated
//! files from the cached results of their producers. An action with an input whose producer
//! has no cached result has no key yet ([`ActionError::InputUnavailable`] names that input).

use std::sync::Arc;

use wbuild_graph::{ActionGraph, ActionNode, Workspace};
use wbuild_store::{Digest, Store, reapi};

use crate::finish::split_outputs;
use crate::spec::{RunOutput, Spec};
use crate::{
    ActionError, Event, EventSink, LocalRunner, Options, SchedError, Scheduler, validate_result,
};

/// The key of an action: what a build looks up in the action cache.
#[derive(Clone, Debug)]
pub struct ActionKey {
    /// The digest of `action` (with the store's digest function).
    pub action_digest: Digest,
    /// The REAPI `Action`: command and input-root digests, timeout, platform, salt.
    pub action: reapi::Action,
    /// The REAPI `Command`: argv, environment, output paths, platform.
    pub command: reapi::Command,
}

/// One action of a pass, described.
#[derive(Debug)]
pub struct Described {
    /// Its index in the pass's graph.
    pub index: usize,
    /// Its key, or why it has none yet (an input whose producer has not run, a source that
    /// cannot be read, ...): then a build would run the producer first, or fail the action.
    pub key: Result<ActionKey, ActionError>,
    /// The local action cache holds a result a build would use (intact, exit code 0, exactly
    /// the declared outputs, every referenced blob present).
    pub cached: bool,
}

/// Describes every action of each pass (a graph and the options a build would run it with,
/// as for [`Scheduler::run_passes`]) without running anything: keys and cache state, in
/// the graph's order. Reads the store; writes nothing to it but stat-cache rows of the
/// sources it hashes (as a build does).
pub fn describe_passes(
    ws: &Workspace,
    store: Arc<Store>,
    passes: &[(&ActionGraph, Options)],
) -> Result<Vec<Vec<Described>>, SchedError> {
    let sched = Scheduler::new(ws, store, Arc::new(KeysOnly), &KeysOnly, None);
    passes
        .iter()
        .map(|(graph, opts)| sched.describe(graph, opts))
        .collect()
}

/// The outputs of a cached result (path, digest) and those that are executable.
type CachedOutputs = (Vec<(String, Digest)>, Vec<String>);

impl Scheduler<'_> {
    /// The key of `action` exactly as a build computes it before its cache lookup: `generated`
    /// holds the digests of the generated files known so far (those of `action`'s inputs must
    /// be there, or the error names the first missing one).
    pub fn action_key(
        &self,
        graph: &ActionGraph,
        action: &ActionNode,
        opts: &Options,
        generated: &crate::Generated,
    ) -> Result<ActionKey, ActionError> {
        let prep = self.prepare(graph, action, opts, generated)?;
        Ok(ActionKey {
            action_digest: prep.action_digest,
            action: prep.action,
            command: prep.command,
        })
    }

    /// The outputs (and the executable ones) of the result a build would take from the local
    /// action cache for `key`, if there is one. Read-only: unlike a build, a broken entry is
    /// left in place.
    fn cached_outputs(
        &self,
        action: &ActionNode,
        key: &Digest,
    ) -> Result<Option<CachedOutputs>, SchedError> {
        let Some(result) = self.store.ac_peek(key)? else {
            return Ok(None);
        };
        if result.exit_code != 0 {
            return Ok(None);
        }
        let Ok(files) = validate_result(self.store.function(), &action.outputs, &result) else {
            return Ok(None);
        };
        let (outputs, executables) = split_outputs(files);
        Ok(Some((outputs, executables.into_iter().collect())))
    }

    /// One pass: each action's key and cache state, in topological order, generated digests
    /// taken from the cached results of their producers (as a build whose actions all hit).
    fn describe(&self, graph: &ActionGraph, opts: &Options) -> Result<Vec<Described>, SchedError> {
        let mut generated = crate::Generated::default();
        let mut out = Vec::with_capacity(graph.actions.len());
        for (index, action) in graph.actions.iter().enumerate() {
            let key = self.action_key(graph, action, opts, &generated);
            let mut cached = false;
            if let Ok(k) = &key
                && let Some((outputs, executables)) =
                    self.cached_outputs(action, &k.action_digest)?
            {
                cached = true;
                generated.extend(outputs);
                self.executables
                    .write()
                    .expect("executables")
                    .extend(executables);
            }
            out.push(Described { index, key, cached });
        }
        Ok(out)
    }
}

/// The runner and event sink of a scheduler that only computes keys: it runs nothing (an
/// action handed to it fails) and reports nothing.
struct KeysOnly;

impl LocalRunner for KeysOnly {
    fn run(&self, _store: &Store, _slot: usize, spec: &Spec) -> Result<RunOutput, SchedError> {
        Ok(RunOutput::failed_with(format!(
            "{}: describing actions runs none of them",
            spec.name
        )))
    }

    fn compiled_count(&self) -> u64 {
        0
    }
}

impl EventSink for KeysOnly {
    fn event(&self, _: &Event) {}
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::sync::Mutex;
    use std::time::Duration;

    use wbuild_graph::{Exec, Label, ToolRef};

    use super::*;
    use crate::{Platform, Status};

    fn label(name: &str) -> Label {
        Label::new("p".to_owned(), name.to_owned())
    }

    /// `a` reads `p/src.txt` and writes `p/a.out`; `b` reads `p/a.out` and writes `p/b.out`.
    fn chain() -> ActionGraph {
        let tool = ToolRef {
            label: Label::new("tools".to_owned(), "t".to_owned()),
            argv0: "t".to_owned(),
            module: "tools/t.wasm".to_owned(),
            data: Vec::new(),
        };
        let node = |name: &str, input: &str, deps: Vec<usize>| ActionNode {
            label: label(name),
            mnemonic: "WasiRun".to_owned(),
            detail: None,
            exec: Exec::Wasi(std::sync::Arc::new(tool.clone())),
            argv: vec!["t".to_owned(), name.to_owned()],
            env: BTreeMap::new(),
            inputs: vec![input.to_owned()].into(),
            outputs: vec![format!("p/{name}.out")],
            deps,
            is_test: false,
            wasi_tools: Vec::new(),
        };
        ActionGraph {
            actions: vec![
                node("a", "p/src.txt", vec![]),
                node("b", "p/a.out", vec![0]),
            ],
            target_files: BTreeMap::new(),
            producers: [
                ("p/a.out".to_owned(), (0, label("a"))),
                ("p/b.out".to_owned(), (1, label("b"))),
            ]
            .into(),
            root_platforms: BTreeMap::new(),
            root_tools: BTreeMap::new(),
        }
    }

    fn options() -> Options {
        Options {
            jobs: 1,
            keep_going: false,
            epoch_secs: 0,
            memory_limit_bytes: 1 << 20,
            timeout: Duration::from_secs(60),
            show_output: false,
            platform: Platform::host(),
            unsandboxed: false,
            observe_native: true,
            remote_upload: false,
            native_toolchain: None,
            known: None,
            download: crate::Download::All,
        }
    }

    /// Writes `"<name> made <output>"` to each output, counting runs.
    #[derive(Default)]
    struct Runner(Mutex<usize>);

    impl LocalRunner for Runner {
        fn run(&self, store: &Store, _: usize, spec: &Spec) -> Result<RunOutput, SchedError> {
            *self.0.lock().unwrap() += 1;
            let mut outputs = Vec::new();
            for o in &spec.outputs {
                let d = store.put_bytes(format!("{} made {o}", spec.argv[1]).as_bytes())?;
                outputs.push((o.clone(), d));
            }
            Ok(RunOutput {
                outputs,
                executables: HashSet::new(),
                ..Default::default()
            })
        }

        fn compiled_count(&self) -> u64 {
            0
        }
    }

    #[derive(Default)]
    struct Digests(Mutex<Vec<(String, Status, Option<String>)>>);

    impl EventSink for Digests {
        fn event(&self, e: &Event) {
            if let Event::Action {
                label,
                status,
                action_digest,
                ..
            } = e
            {
                self.0
                    .lock()
                    .unwrap()
                    .push((label.clone(), *status, action_digest.clone()));
            }
        }
    }

    fn digest_text(d: &Described) -> String {
        d.key.as_ref().expect("a key").action_digest.to_string()
    }

    #[test]
    fn keys_match_the_build_and_follow_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        std::fs::create_dir_all(root.join("tools")).unwrap();
        std::fs::create_dir_all(root.join("p")).unwrap();
        std::fs::write(root.join("tools/t.wasm"), b"module bytes").unwrap();
        std::fs::write(root.join("p/src.txt"), b"source").unwrap();
        let ws = Workspace {
            root: root.canonicalize().unwrap(),
            config: Default::default(),
            externals: Default::default(),
        };
        let store = Arc::new(Store::open(&dir.path().join("store")).unwrap());
        let g = chain();
        let opts = options();

        // Nothing built: a's key is known and missed, b's waits for a's output.
        let before = describe_passes(&ws, store.clone(), &[(&g, opts.clone())]).unwrap();
        let before = &before[0];
        assert!(!before[0].cached);
        match &before[1].key {
            Err(ActionError::InputUnavailable { path, label: l }) => {
                assert_eq!(path, "p/a.out");
                assert_eq!(*l, label("a"));
            }
            other => panic!("expected an unavailable input, got {other:?}"),
        }
        assert!(!before[1].cached);

        // Build: the digests the build reports are the described ones.
        let runner = Arc::new(Runner::default());
        let events = Digests::default();
        let summary = Scheduler::new(&ws, store.clone(), runner.clone(), &events, None)
            .run(&g, &opts)
            .unwrap();
        assert_eq!(summary.executed, 2);
        let built = events.0.lock().unwrap().clone();
        let after = describe_passes(&ws, store.clone(), &[(&g, opts.clone())]).unwrap();
        let after = &after[0];
        assert_eq!(digest_text(&before[0]), digest_text(&after[0]));
        for (d, (l, status, digest)) in after.iter().zip(&built) {
            assert_eq!(*status, Status::Executed);
            assert_eq!(l, &g.actions[d.index].label.to_string());
            assert_eq!(digest.as_deref(), Some(digest_text(d).as_str()));
            assert!(d.cached, "{l} is cached after the build");
        }
        // Describing ran nothing.
        assert_eq!(*runner.0.lock().unwrap(), 2);

        // An entry whose output blob is gone is a miss, and peeking leaves the row in place.
        let a = after[0].key.as_ref().unwrap().action_digest;
        let result = store.ac_peek(&a).unwrap().expect("an entry for a");
        let out = Digest::from_proto(
            store.function(),
            result.output_files[0].digest.as_ref().unwrap(),
        )
        .unwrap();
        let blob = store.verified_blob_path(&out).unwrap();
        std::fs::remove_file(&blob).unwrap();
        let broken = describe_passes(&ws, store.clone(), &[(&g, opts.clone())]).unwrap();
        assert!(!broken[0][0].cached);
        assert!(broken[0][1].key.is_err());
        assert_eq!(store.ac_find_by_label("//p:a").unwrap(), vec![a]);

        // A changed option changes the key.
        let mut other = opts.clone();
        other.memory_limit_bytes *= 2;
        let changed = describe_passes(&ws, store, &[(&g, other)]).unwrap();
        assert_ne!(digest_text(&changed[0][0]), digest_text(&after[0]));
    }
}
