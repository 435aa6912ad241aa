//! Platform passes: a build targets one or several platforms (`--platform a,b`, a native
//! rule's `platform` attribute, `[build] platform`, the host), one scheduler pass each.

use std::collections::BTreeMap;
use std::path::Path;

use wbuild_graph::{ActionGraph, Label, Workspace};
use wbuild_sched::Platform;

use crate::{DriverError, Result};

/// The platforms named with `--platform`, in order, each once (none: see
/// [`default_platform`]).
pub fn flag_platforms(flags: &[String]) -> Result<Vec<Platform>> {
    let mut out: Vec<Platform> = Vec::new();
    for f in flags {
        let p = Platform::parse(f.trim())
            .map_err(|e| DriverError::Config(format!("--platform: {e}")))?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// The platform of targets without a `platform` attribute when `--platform` is not given:
/// `[build] platform`, else the host.
pub fn default_platform(ws: &Workspace) -> Result<Platform> {
    let Some(name) = ws.config.build.platform.as_deref() else {
        return Ok(Platform::host());
    };
    Platform::parse(name).map_err(|e| {
        DriverError::Config(format!(
            "[build] platform in {}: {e}",
            ws.root.join("wbuild.toml").display()
        ))
    })
}

/// What to build for which platform: with `--platform`, every root for each platform named;
/// otherwise roots grouped by their `platform` attribute (the rest on the default platform).
/// `None` stands for the whole graph.
pub fn platform_passes(
    ws: &Workspace,
    flags: &[Platform],
    graph: &ActionGraph,
    roots: &[Label],
) -> Result<Vec<(Platform, Option<Vec<Label>>)>> {
    if !flags.is_empty() {
        return Ok(flags.iter().map(|p| (*p, None)).collect());
    }
    let default = default_platform(ws)?;
    let mut groups: BTreeMap<&'static str, (Platform, Vec<Label>)> = BTreeMap::new();
    for r in roots {
        let p = match graph.root_platforms.get(r) {
            Some(name) => {
                Platform::parse(name).map_err(|e| DriverError::Config(format!("{r}: {e}")))?
            }
            None => default,
        };
        groups
            .entry(p.name())
            .or_insert((p, Vec::new()))
            .1
            .push(r.clone());
    }
    Ok(match groups.len() {
        0 | 1 => vec![(groups.into_values().next().map_or(default, |g| g.0), None)],
        _ => groups.into_values().map(|(p, r)| (p, Some(r))).collect(),
    })
}

/// A clear error up front when the cross toolchain for `p` is not installed under
/// `/usr/bin`.
pub fn check_cross_toolchain(p: Platform) -> Result<()> {
    check_cross_toolchain_in(p, Path::new("/usr/bin"))
}

/// [`check_cross_toolchain`] with the tools looked up in `bin`.
pub fn check_cross_toolchain_in(p: Platform, bin: &Path) -> Result<()> {
    if p == Platform::host() {
        return Ok(());
    }
    for (_, tool) in p.tool_env() {
        let Some(program) = tool.split_whitespace().next() else {
            continue;
        };
        if !bin.join(program).exists() {
            let t = p.triple();
            let package = if program.starts_with("qemu") {
                "qemu-user-static".to_owned()
            } else if program.ends_with("-g++") {
                format!("g++-{t}")
            } else if program.ends_with("-gcc") {
                format!("gcc-{t}")
            } else {
                format!("binutils-{t}")
            };
            return Err(DriverError::Config(format!(
                "building for {} needs {}, which is not installed: install the Debian package {package} (apt-get install {package})",
                p.name(),
                bin.join(program).display()
            )));
        }
    }
    Ok(())
}

/// Whether `graph` has native actions (genrule, cc_*), which need the sandbox and a
/// toolchain for their platform.
pub fn has_native(graph: &ActionGraph) -> bool {
    graph
        .actions
        .iter()
        .any(|a| a.exec == wbuild_graph::Exec::Native)
}
