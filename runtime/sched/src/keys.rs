//! The action key: the REAPI `Command`, input-root Merkle tree and `Action` of an action
//! (hashed with the store's digest function), and the [`Spec`] that runs it. Nothing that is
//! not content enters a key: no absolute host path, no user, no time.

use std::collections::{BTreeMap, HashSet};

use wbuild_exec_wasi::EXECUTOR_VERSION;
use wbuild_graph::{ActionGraph, ActionNode, Exec, Label};
use wbuild_store::{Digest, digest_message, reapi};

use crate::spec::{self, ExecProps, Kind, Spec};
use crate::{Options, Scheduler, merkle, native, observed};

/// Why an action cannot be keyed or staged: the action fails, the build goes on.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("input {path} (produced by {label}) is not available")]
    InputUnavailable { path: String, label: Label },
    /// The store's reason is part of the message (it is not a `source`).
    #[error("cannot read input {path}: {error}")]
    ReadInput {
        path: String,
        error: Box<wbuild_store::StoreError>,
    },
    #[error("tool data {guest} of {tool} collides with input {staged}")]
    DataCollides {
        guest: String,
        tool: Label,
        staged: String,
    },
    #[error("input path {path} is both a file and a directory")]
    PathConflict { path: String },
    #[error("input {path} changed while the build was running; run the build again")]
    InputChanged { path: String },
}

/// The key of an action and what it takes to run it.
pub(crate) struct Prepared {
    pub(crate) action_digest: Digest,
    /// The REAPI messages of the key (uploaded for remote execution).
    pub(crate) action: reapi::Action,
    pub(crate) command: reapi::Command,
    /// Every `Directory` message of the input root.
    pub(crate) dirs: Vec<merkle::DirectoryBlob>,
    /// What running it takes (staged files are the input root's, minus a WASI module).
    pub(crate) spec: Spec,
    /// Source files (workspace path -> digest) that may need to enter the CAS before staging.
    pub(crate) sources: Vec<(String, Digest)>,
    /// Native actions: launcher scripts of the WASI tools they run (workspace path, text);
    /// they enter the CAS before the action runs.
    pub(crate) launchers: Vec<(String, String)>,
    /// After a miss of the full key: the weak key and what it is made of.
    pub(crate) weak: Option<observed::Weak>,
    /// After a miss: why the action runs (compared with its last run here).
    pub(crate) why: Option<String>,
    /// A native action that runs unobserved (observing could not narrow its key): the
    /// number of its runs in a row without observation, this one included (see
    /// `Scheduler::elide`).
    pub(crate) unobserved: Option<u32>,
}

impl Prepared {
    /// Run a native action unobserved (`Some(n)`: the `n`th such run in a row, as
    /// `Scheduler::elide` decided) or, if it was to run unobserved, observed again (`None`).
    /// An action that is not observed anyway (`--sandbox=unobserved`) stays so.
    pub(crate) fn set_unobserved(&mut self, unobserved: Option<u32>) {
        if (unobserved.is_some() || self.unobserved.is_some())
            && let Kind::Native { observe, .. } = &mut self.spec.kind
        {
            *observe = unobserved.is_none();
        }
        self.unobserved = unobserved;
    }

    /// The weak key of the action (see `observed`), with its parts.
    pub(crate) fn weak_key(
        &self,
        f: wbuild_store::DigestFunction,
        node: &ActionNode,
    ) -> observed::Weak {
        let (module, observed) = match &self.spec.kind {
            Kind::Wasi { module, .. } => (Some(module), true),
            Kind::Native { observe, .. } => (None, *observe),
            Kind::Archive => (None, false),
        };
        observed::weak_key(
            f,
            observed::mode(node, observed),
            &self.command,
            &self.action,
            &self.spec.files,
            &self.spec.executables,
            module,
        )
    }
}

/// The environment of an action's `Command`, sorted by name: for a native action the tools
/// of its platform (from the platform's toolchain bundle, if one is pinned) unless the rule
/// sets the variable itself, then the action's own variables.
pub fn command_env(action: &ActionNode, opts: &Options) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    if action.exec == Exec::Native {
        match &opts.native_toolchain {
            Some(tc) => env.extend(tc.env.iter().cloned()),
            None => {
                for (k, v) in opts.platform.tool_env() {
                    env.insert(k.to_owned(), v);
                }
            }
        }
    }
    env.extend(action.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.into_iter().collect()
}

impl Scheduler<'_> {
    /// Digest of an input: generated (from the producing action) or a source file.
    pub(crate) fn input_digest(
        &self,
        graph: &ActionGraph,
        path: &str,
        generated: &crate::Generated,
    ) -> Result<(Digest, bool), ActionError> {
        if let Some(d) = generated.get(path) {
            return Ok((*d, false));
        }
        if let Some((_, label)) = graph.producers.get(path) {
            return Err(ActionError::InputUnavailable {
                path: path.to_owned(),
                label: label.clone(),
            });
        }
        if let Some(d) = self.sources.read().expect("source digests").get(path) {
            return Ok((*d, true));
        }
        let abs = self.ws.path(path);
        let d = self
            .store
            .file_digest(&abs)
            .map_err(|error| ActionError::ReadInput {
                path: path.to_owned(),
                error: Box::new(error),
            })?;
        self.sources
            .write()
            .expect("source digests")
            .insert(path.to_owned(), d);
        Ok((d, true))
    }

    /// Compute the action key: REAPI Command, input root and Action.
    pub(crate) fn prepare(
        &self,
        graph: &ActionGraph,
        action: &ActionNode,
        opts: &Options,
        generated: &crate::Generated,
    ) -> Result<Prepared, ActionError> {
        let f = self.store.function();
        let mut files = BTreeMap::new();
        let mut sources = Vec::new();
        for path in &action.inputs {
            let (d, is_source) = self.input_digest(graph, path, generated)?;
            if is_source {
                sources.push((path.clone(), d));
            }
            files.insert(path.clone(), d);
        }
        let mut launchers = Vec::new();
        let mut props = ExecProps::default();
        let mut executables = HashSet::new();
        let (platform, kind): (Vec<(&str, String)>, Kind) = match &action.exec {
            Exec::Wasi(tool) => {
                for (guest, ws_path) in &tool.data {
                    let (d, is_source) = self.input_digest(graph, ws_path, generated)?;
                    if is_source {
                        sources.push((ws_path.clone(), d));
                    }
                    let staged = guest.trim_start_matches('/').to_owned();
                    if let Some(prev) = files.insert(staged.clone(), d)
                        && prev != d
                    {
                        return Err(ActionError::DataCollides {
                            guest: guest.clone(),
                            tool: tool.label.clone(),
                            staged,
                        });
                    }
                }
                let (m, module_is_source) = self.input_digest(graph, &tool.module, generated)?;
                if module_is_source {
                    sources.push((tool.module.clone(), m));
                }
                props.set("wbuild-executor", EXECUTOR_VERSION);
                props.set("wbuild-memory-limit", opts.memory_limit_bytes.to_string());
                props.set("wbuild-source-date-epoch", opts.epoch_secs.to_string());
                (
                    vec![("OSFamily", "wasi".to_owned())],
                    Kind::Wasi {
                        module: m,
                        memory_limit: opts.memory_limit_bytes,
                    },
                )
            }
            Exec::Native => {
                props.set("wbuild-executor", wbuild_exec_native::SANDBOX_VERSION);
                props.set(
                    "wbuild-sandbox",
                    if opts.unsandboxed {
                        "none"
                    } else {
                        "namespaces"
                    },
                );
                props.set("wbuild-source-date-epoch", opts.epoch_secs.to_string());
                props.set(
                    "wbuild-toolchain",
                    match &opts.native_toolchain {
                        Some(tc) => format!("bundle {} {}", tc.name, tc.digest),
                        None => native::toolchain_identity(opts.platform),
                    },
                );
                // Executable inputs (tests, tools built earlier) stay executable.
                {
                    let known = self.executables.read().expect("executables");
                    executables.extend(files.keys().filter(|p| known.contains(*p)).cloned());
                }
                // Launchers of the WASI tools the command runs: part of the input root, and
                // the WASI executor's semantics part of the key.
                let mut wasi_modules = Vec::new();
                for (path, tool) in &action.wasi_tools {
                    let module = files.get(&tool.module).copied();
                    wasi_modules.extend(module);
                    let script =
                        native::wasi_launcher(path, tool, module.as_ref(), &action.outputs, opts);
                    files.insert(path.clone(), Digest::of(f, script.as_bytes()));
                    executables.insert(path.clone());
                    launchers.push((path.clone(), script));
                }
                if !action.wasi_tools.is_empty() {
                    props.set("wbuild-wasi-executor", EXECUTOR_VERSION);
                }
                (
                    vec![
                        ("ISA", opts.platform.isa().to_owned()),
                        ("OSFamily", "linux".to_owned()),
                    ],
                    Kind::Native {
                        toolchain: opts.native_toolchain.clone(),
                        unsandboxed: opts.unsandboxed,
                        observe: opts.observe_native && !opts.unsandboxed,
                        runs_wasi_tools: !action.wasi_tools.is_empty(),
                        wasi_modules,
                        compile: action.mnemonic == "CcCompile" && action.wasi_tools.is_empty(),
                    },
                )
            }
            Exec::Archive => {
                props.set("wbuild-executor", crate::archive::ARCHIVE_VERSION);
                props.set("wbuild-source-date-epoch", opts.epoch_secs.to_string());
                (vec![("OSFamily", "wbuild".to_owned())], Kind::Archive)
            }
        };
        // Pinned toolchain bundles the action uses: their digests are its toolchain identity.
        let mut bundles = BTreeMap::new();
        let tool_paths = action
            .wasi_tool()
            .into_iter()
            .chain(action.wasi_tools.iter().map(|(_, t)| t))
            .flat_map(|t| std::iter::once(&t.module).chain(t.data.iter().map(|(_, p)| p)));
        for p in action.inputs.iter().chain(tool_paths) {
            if let Some((ext, _)) = self.ws.external_of(p) {
                let name = self.ws.external_name(p).expect("external");
                bundles.insert(name, ext.digest.as_str());
            }
        }
        if !bundles.is_empty() {
            let v: Vec<String> = bundles.iter().map(|(n, d)| format!("{n}={d}")).collect();
            props.set("wbuild-toolchain-bundles", v.join(","));
        }
        let env = command_env(action, opts);
        let mut keyed = files.clone();
        if let Kind::Wasi { module, .. } = &kind {
            keyed.insert(spec::MODULE_PATH.to_owned(), *module);
        }
        let (root, dirs) = merkle::input_root(f, &keyed, &executables)
            .map_err(|c| ActionError::PathConflict { path: c.0 })?;

        let platform = reapi::Platform {
            properties: platform
                .into_iter()
                .map(|(n, v)| reapi::platform::Property {
                    name: n.to_owned(),
                    value: v,
                })
                .collect(),
        };
        #[allow(deprecated)]
        let command = reapi::Command {
            arguments: action.argv.clone(),
            environment_variables: env
                .iter()
                .map(|(k, v)| reapi::command::EnvironmentVariable {
                    name: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            output_paths: action.outputs.clone(),
            platform: Some(platform.clone()),
            ..Default::default()
        };
        let (command_digest, _) = digest_message(f, &command);
        let act = reapi::Action {
            command_digest: Some(command_digest.to_proto()),
            input_root_digest: Some(root.to_proto()),
            timeout: Some(bazel_remote_apis::google::protobuf::Duration {
                seconds: opts.timeout.as_secs() as i64,
                nanos: 0,
            }),
            do_not_cache: false,
            salt: props.encode(),
            platform: Some(platform),
        };
        let (action_digest, _) = digest_message(f, &act);
        let name = match action.wasi_tool() {
            Some(t) => t.label.to_string(),
            None => action.label.to_string(),
        };
        let spec = Spec {
            name,
            argv: action.argv.clone(),
            env,
            files,
            executables,
            outputs: action.outputs.clone(),
            epoch_secs: opts.epoch_secs,
            timeout: opts.timeout,
            seed: action_digest.hash,
            kind,
        };
        Ok(Prepared {
            action_digest,
            action: act,
            command,
            dirs,
            spec,
            sources,
            launchers,
            weak: None,
            why: None,
            unobserved: None,
        })
    }
}
