//! `wbuild aquery EXPR`: the actions of the targets a query yields, analysed as a build
//! analyses them (platform passes, toolchains), each with its action key as the scheduler
//! computes it (`wbuild_sched::describe_passes`) and whether the local action cache holds it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;

use anyhow::Result;
use wbuild_graph::query::{self, NodeKind, Query, QueryGraph};
use wbuild_graph::{ActionGraph, ActionNode, Exec, Label, TargetPattern, sh_quote};
use wbuild_sched::{ActionError, Described, Options, command_env, describe_passes};

use crate::SandboxMode;

/// `wbuild aquery`: the actions of targets, with their keys.
#[derive(clap::Args)]
pub(crate) struct AqueryArgs {
    /// A `wbuild query` expression; the actions of the rule targets it yields are shown
    /// (source and generated files are left out), e.g. 'deps(//app:main)',
    /// 'kind(genrule, //...)'.
    expression: String,
    /// text: one block per action, one field per line; json: an array of objects.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    output: Format,
    /// The platforms of native actions, as for `build` (their keys depend on it).
    #[arg(long, value_delimiter = ',')]
    platform: Vec<String>,
    /// How native actions would run, as for `build` (their keys say so).
    #[arg(long, value_enum, default_value_t = SandboxMode::Namespaces)]
    sandbox: SandboxMode,
    /// Include the test actions of test targets, as `wbuild test` does.
    #[arg(long)]
    tests: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

/// One action as printed.
#[derive(serde::Serialize)]
struct Row {
    label: String,
    mnemonic: String,
    detail: Option<String>,
    /// `wasi`, or the platform of the native action's pass.
    platform: String,
    /// The WASI tool's module (a workspace path), or `native`.
    executor: String,
    argv: Vec<String>,
    /// The `Command`'s environment.
    env: BTreeMap<String, String>,
    inputs: Vec<String>,
    outputs: Vec<String>,
    action_digest: Option<String>,
    command_digest: Option<String>,
    input_root_digest: Option<String>,
    /// Why the digest is not known yet: the first input whose producer has no result.
    missing_input: Option<String>,
    /// Why the key cannot be computed (a source that cannot be read, ...).
    error: Option<String>,
    cached: bool,
}

pub(crate) fn run(cli_cache: &std::path::Path, args: &AqueryArgs) -> Result<i32> {
    // The expression and the flags are checked before anything is loaded.
    let cwd = std::env::current_dir()?;
    let (_, pkg) = wbuild_driver::session::workspace(&cwd)?;
    let q = Query::parse(&args.expression, &pkg)?;
    let flags = wbuild_driver::platform::flag_platforms(&args.platform)?;
    let (ws, _) = wbuild_driver::session::workspace_resolved(cli_cache, &crate::note)?;
    let loaded = query::load(&ws, &q)?;
    let graph = QueryGraph::new(&loaded.graph, &loaded.files, &|dir| ws.is_package(dir));
    let result = q.evaluate(&graph)?;
    for cycle in &result.cycles {
        eprintln!(
            "warning: dependency cycle in the target graph: {}; the result includes every target on it",
            query::render_cycle(&graph, cycle)
        );
    }
    let labels: BTreeSet<Label> = result
        .nodes
        .iter()
        .filter_map(|id| match graph.node_kind(id) {
            NodeKind::Rule(t) => Some(t.label.clone()),
            NodeKind::SourceFile | NodeKind::GeneratedFile => None,
        })
        .collect();
    if labels.is_empty() {
        eprintln!("warning: Empty results");
        return print(&[], args.output);
    }
    // Keys use the digest function a build would: the [remote]'s of wbuild.toml when one is
    // configured (asked of it, with the build's deadlines; unreachable, the build would go
    // on locally with BLAKE3, and so do these keys).
    let function = {
        let (cache, executor) = wbuild_driver::session::connect_remote(
            &ws,
            &wbuild_driver::session::RemoteRequest::default(),
            &crate::note,
        )?;
        executor
            .or(cache)
            .map_or(wbuild_store::DigestFunction::Blake3, |r| r.function())
    };

    let sandbox = match args.sandbox {
        SandboxMode::Namespaces => wbuild_driver::SandboxMode::Namespaces,
        SandboxMode::Unobserved => wbuild_driver::SandboxMode::Unobserved,
        SandboxMode::None => wbuild_driver::SandboxMode::None,
    };
    let patterns: Vec<TargetPattern> = labels.iter().cloned().map(TargetPattern::Label).collect();
    let store = wbuild_driver::session::open_store_with(cli_cache, function, &crate::note)?;
    let signature = wbuild_graph::workspace_signature(&ws)?;
    let wbuild_graph::Analysed {
        graph: actions,
        roots,
        ..
    } = wbuild_driver::session::analyse(&ws, &store, &patterns, args.tests, &signature)?;
    let passes = wbuild_driver::session::split_passes(&ws, &flags, &actions, &roots)?;
    let bundles = wbuild_driver::session::pass_bundles(&ws, &passes, sandbox)?;
    let request = wbuild_driver::BuildRequest {
        patterns: Vec::new(),
        platforms: args.platform.clone(),
        jobs: None,
        keep_going: false,
        tests: args.tests,
        show_output: false,
        sandbox,
        remote: Default::default(),
        provenance: None,
        sign_key: None,
        cache_dir: cli_cache.to_owned(),
        profile: None,
    };
    // Nothing runs: the number of jobs is in no key.
    let opts = wbuild_driver::session::build_options(&ws, &request, 1);
    let runs: Vec<(&ActionGraph, Options)> = passes
        .iter()
        .map(|(p, g)| {
            (
                g.as_ref(),
                wbuild_driver::session::pass_options(&opts, *p, &bundles),
            )
        })
        .collect();
    let described = describe_passes(&ws, store, &runs)?;

    let mut rows = Vec::new();
    // A WASI action is the same action in every pass: shown once.
    let mut seen_wasi = HashSet::new();
    for ((graph, opts), pass) in runs.iter().zip(&described) {
        for d in pass {
            let action = &graph.actions[d.index];
            if !labels.contains(&action.label) {
                continue;
            }
            if matches!(action.exec, Exec::Wasi(_)) && !seen_wasi.insert(action.name()) {
                continue;
            }
            rows.push(row(action, opts, d));
        }
    }
    if rows.is_empty() {
        eprintln!(
            "warning: the {} target(s) matched have no actions (a wasi_tool or filegroup only provides files)",
            labels.len()
        );
    }
    print(&rows, args.output)
}

fn row(action: &ActionNode, opts: &Options, d: &Described) -> Row {
    let (platform, executor) = match &action.exec {
        Exec::Wasi(tool) => ("wasi".to_owned(), tool.module.clone()),
        Exec::Native => (opts.platform.name().to_owned(), "native".to_owned()),
        Exec::Archive => (
            opts.platform.name().to_owned(),
            "builtin archiver".to_owned(),
        ),
    };
    let mut r = Row {
        label: action.label.to_string(),
        mnemonic: action.mnemonic.clone(),
        detail: action.detail.clone(),
        platform,
        executor,
        argv: action.argv.clone(),
        env: command_env(action, opts).into_iter().collect(),
        inputs: action.inputs.to_vec(),
        outputs: action.outputs.clone(),
        action_digest: None,
        command_digest: None,
        input_root_digest: None,
        missing_input: None,
        error: None,
        cached: d.cached,
    };
    match &d.key {
        Ok(k) => {
            let proto = |p: &Option<wbuild_store::reapi::Digest>| {
                p.as_ref().map(|p| format!("{}/{}", p.hash, p.size_bytes))
            };
            r.action_digest = Some(k.action_digest.to_string());
            r.command_digest = proto(&k.action.command_digest);
            r.input_root_digest = proto(&k.action.input_root_digest);
        }
        Err(ActionError::InputUnavailable { path, label }) => {
            r.missing_input = Some(format!("{path} (produced by {label})"));
        }
        Err(e) => r.error = Some(e.to_string()),
    }
    r
}

/// A word as the shell reads it, on one line: a value with control characters (a genrule's
/// multi-line command) in `$'...'` with escapes, so no value can pass for another field.
fn quote(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return sh_quote(s);
    }
    let mut q = String::from("$'");
    for c in s.chars() {
        match c {
            '\\' => q.push_str("\\\\"),
            '\'' => q.push_str("\\'"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            '\r' => q.push_str("\\r"),
            c if c.is_control() && (c as u32) < 0x100 => {
                q.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => q.push_str(&format!("\\u{:04x}", c as u32)),
            c => q.push(c),
        }
    }
    q.push('\'');
    q
}

/// A single value on its line: quoted only if it holds control characters.
fn line(s: &str) -> String {
    if s.chars().any(char::is_control) {
        quote(s)
    } else {
        s.to_owned()
    }
}

fn words(items: impl IntoIterator<Item = String>) -> String {
    let v: Vec<String> = items.into_iter().map(|s| quote(&s)).collect();
    if v.is_empty() {
        "(none)".to_owned()
    } else {
        v.join(" ")
    }
}

fn text(rows: &[Row]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for r in rows {
        let _ = writeln!(
            s,
            "{}",
            match &r.detail {
                Some(d) => format!("{} {}", r.label, line(d)),
                None => r.label.clone(),
            }
        );
        let _ = writeln!(s, "  mnemonic: {}", r.mnemonic);
        if let Some(d) = &r.detail {
            let _ = writeln!(s, "  detail: {}", line(d));
        }
        let _ = writeln!(s, "  platform: {}", r.platform);
        let _ = writeln!(s, "  executor: {}", line(&r.executor));
        let _ = writeln!(s, "  argv: {}", words(r.argv.iter().cloned()));
        let _ = writeln!(
            s,
            "  env: {}",
            words(r.env.iter().map(|(k, v)| format!("{k}={v}")))
        );
        let _ = writeln!(s, "  inputs: {}", words(r.inputs.iter().cloned()));
        let _ = writeln!(s, "  outputs: {}", words(r.outputs.iter().cloned()));
        match (&r.action_digest, &r.missing_input, &r.error) {
            (Some(a), _, _) => {
                let _ = writeln!(s, "  action digest: {a}");
                if let Some(c) = &r.command_digest {
                    let _ = writeln!(s, "  command digest: {c}");
                }
                if let Some(i) = &r.input_root_digest {
                    let _ = writeln!(s, "  input root digest: {i}");
                }
            }
            (None, Some(m), _) => {
                let _ = writeln!(
                    s,
                    "  action digest: not known until its inputs are built: {} has no result yet",
                    line(m)
                );
            }
            (None, None, e) => {
                let _ = writeln!(
                    s,
                    "  action digest: cannot be computed: {}",
                    line(e.as_deref().unwrap_or("unknown reason"))
                );
            }
        }
        let _ = writeln!(s, "  cached: {}", if r.cached { "yes" } else { "no" });
    }
    s
}

fn print(rows: &[Row], format: Format) -> Result<i32> {
    let out = match format {
        Format::Text => text(rows),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(rows)?;
            s.push('\n');
            s
        }
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(0),
        // `wbuild aquery ... | head`: the reader is gone, nothing more to say.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e.into()),
    }
}
