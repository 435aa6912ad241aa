//! `wbuild why LABEL`: why each action of a target ran the last time it ran here, from the
//! key manifests the scheduler keeps (what the run's key was made of, compared with the run
//! before it: which observed path changed, appeared or disappeared, or which part of the
//! command, tool or settings changed), and what its key follows.

use anyhow::{Context, Result, bail};
use wbuild_graph::Label;
use wbuild_sched::KeyManifest;

use super::{Cli, open_store, workspace};

pub fn run(cli: &Cli, target: &str) -> Result<i32> {
    let (_ws, pkg) = workspace()?;
    let label = Label::parse(target, &pkg)?;
    let store = open_store(&cli.cache_dir)?;
    let found = store.key_manifests(&format!("{label}\0"))?;
    if found.is_empty() {
        bail!(
            "no run of {label} is recorded in cache {}: build it first (`wbuild build {label}`)",
            store.dir().display()
        );
    }
    for (id, json) in found {
        let m: KeyManifest = serde_json::from_str(&json)
            .with_context(|| format!("the key manifest of {} is damaged", m_name(&id)))?;
        let platform = id.rsplit('\0').next().unwrap_or_default();
        let place = if platform == wbuild_graph::OUT_DIR {
            String::new()
        } else {
            format!(" ({platform})")
        };
        println!("{} [{}]{place}", m.name, m.mnemonic);
        let build = m
            .build
            .map(|b| format!(" in build {b}"))
            .unwrap_or_default();
        println!("  last ran{build}: {}", m.why);
        if m.observed {
            let count = |w: &str| m.paths.iter().filter(|(how, _, _)| how == w).count();
            println!(
                "  its key follows {} observed paths ({} read, {} listed, {} probed and missing)",
                m.paths.len(),
                count("read"),
                count("listed"),
                count("probed")
            );
        } else if m.unobserved_runs > 0 {
            println!(
                "  its key follows all {} declared inputs: it ran unobserved, since its last observed run with the same command read every one of them (observed again within {} runs)",
                m.paths.len(),
                wbuild_sched::UNOBSERVED_RUNS + 1 - m.unobserved_runs
            );
        } else {
            println!(
                "  its key follows all {} declared inputs (its reads are not observed)",
                m.paths.len()
            );
        }
    }
    Ok(0)
}

/// The action an identity names (label, mnemonic, detail), for messages.
fn m_name(id: &str) -> String {
    id.split('\0')
        .take(3)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
