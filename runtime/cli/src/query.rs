//! `wbuild query EXPR`: Bazel-style queries over the target graph (see
//! `wbuild_graph::query`).

use anyhow::Result;
use wbuild_graph::query::{self, OutputFormat, Query, QueryGraph};

/// `wbuild query`: what the target graph holds, before analysis.
#[derive(clap::Args)]
pub(crate) struct QueryArgs {
    /// The query, e.g. 'deps(//app:main)', 'rdeps(//..., //lib:base, 1)',
    /// 'kind("cc_.*", //...) - attr(copts, "-O0", //...)'. Target patterns, deps, rdeps,
    /// somepath, allpaths, kind, attr, filter, tests, set, let/$var, and the set operators
    /// `+`, `-`, `^` (union, except, intersect: same precedence, left to right). deps()
    /// includes the source files targets use, as in Bazel.
    expression: String,
    /// How to print the result: label (one per line, sorted by package then name), json
    /// (label, kind, direct deps) or dot (Graphviz, the edges among the result's nodes).
    #[arg(long, value_enum, default_value_t = Format::Label)]
    output: Format,
    /// With --output dot: the largest graph drawn; a larger result is an error.
    #[arg(long, default_value_t = 500, value_name = "NODES")]
    dot_limit: usize,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Label,
    Json,
    Dot,
}

pub(crate) fn run(cli_cache: &std::path::Path, args: &QueryArgs) -> Result<i32> {
    // The expression is checked before anything is loaded.
    let cwd = std::env::current_dir()?;
    let (_, pkg) = wbuild_driver::session::workspace(&cwd)?;
    let q = Query::parse(&args.expression, &pkg)?;
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
    if result.cycles.is_empty()
        && let Some(cycle) = &loaded.cycle
    {
        eprintln!("warning: {cycle}; the query answered over it");
    }
    let format = match args.output {
        Format::Label => OutputFormat::Label,
        Format::Json => OutputFormat::Json,
        Format::Dot => OutputFormat::Dot,
    };
    if result.nodes.is_empty() {
        eprintln!("warning: Empty results");
        if format == OutputFormat::Label {
            return Ok(0);
        }
    }
    let text = query::render(&graph, &result.nodes, format, args.dot_limit)?;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(0),
        // `wbuild query ... | head`: the reader is gone, nothing more to say.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e.into()),
    }
}
