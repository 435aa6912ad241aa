//! `wbuild worker`: the arguments of a Remote Workers API (Bots) worker; the bot session
//! and the lease runner are `wbuild_driver::worker`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use wbuild_sched::Platform;
use wbuild_store::Store;

#[derive(clap::Args)]
pub struct WorkerArgs {
    /// The REAPI engine handing out work: grpc://host:port or grpcs://host:port (it must
    /// serve the Bots API and hold the actions' inputs in its CAS).
    #[arg(long, value_name = "URL")]
    engine: String,
    /// The engine's instance name.
    #[arg(long, default_value = "")]
    instance: String,
    /// Native platforms this worker runs actions for (comma separated or repeated; default:
    /// the host's). WASI actions run on every worker.
    #[arg(long, value_delimiter = ',')]
    platform: Vec<String>,
    /// Actions to run at once (default: number of cores).
    #[arg(short, long)]
    jobs: Option<usize>,
    /// The name reported with every result (default: host name and process id).
    #[arg(long)]
    name: Option<String>,
    /// Toolchain bundles native actions may pin (a bundle file or oci://...), installed into
    /// this worker's cache before it takes work. Repeatable.
    #[arg(long, value_name = "SOURCE")]
    toolchain: Vec<String>,
    /// Public keys trusted to sign those bundles (minisign .pub files). Repeatable.
    #[arg(long, value_name = "FILE")]
    key: Vec<String>,
    /// TLS trust and identity for a grpcs:// engine, and the credentials sent with every
    /// call (as for `wbuild build`).
    #[command(flatten)]
    remote_auth: crate::RemoteAuthArgs,
}

pub fn run(cache: &Option<PathBuf>, args: &WorkerArgs) -> Result<i32> {
    let platforms: Vec<Platform> = if args.platform.is_empty() {
        vec![Platform::host()]
    } else {
        args.platform
            .iter()
            .map(|p| Platform::parse(p).map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?
    };
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let name = args.name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "worker".to_owned());
        format!("{host}-{}", std::process::id())
    });
    let cache_dir = cache.clone().unwrap_or_else(Store::default_dir);
    crate::toolchain::install_sources(&cache_dir, &args.toolchain, &args.key)?;
    let config = wbuild_driver::worker::WorkerConfig {
        engine: args.engine.clone(),
        instance: args.instance.clone(),
        platforms,
        jobs,
        name,
        cache_dir,
        auth: args.remote_auth.auth(),
    };
    Ok(wbuild_driver::worker::run(
        &config,
        Arc::new(|line: &str| eprintln!("{line}")),
    )?)
}
