//! `wbuild verify`: rebuilds targets several times from scratch, in fresh copies of the
//! workspace with empty caches (nothing is written to the user's cache, and nothing is read
//! from it but compiled tool modules, which change no output), varying
//! what the user asks for, and compares every output. A differing output is reported with the
//! action that produced it, the first differing byte, a likely cause where one is recognisable,
//! and diffoscope's diff when diffoscope is installed. JSON and JUnit reports for CI.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use wbuild_graph::Workspace;

/// Conditions `--vary` can change between runs.
const VARIATIONS: &[&str] = &["path", "env", "umask", "time", "jobs", "order"];

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Targets to check (default //...).
    patterns: Vec<String>,
    /// How many clean builds to compare.
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// What differs between runs: path (workspace location), env (the environment wbuild is
    /// started with), umask, time (runs start at different seconds), jobs (-j1 against -jN),
    /// order (files created in another order). Default: all.
    #[arg(long, value_delimiter = ',')]
    vary: Vec<String>,
    /// Write a JUnit XML report (one test case per checked output).
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Write a JSON report.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Target platform of native actions, as for `build`.
    #[arg(long)]
    platform: Option<String>,
    /// How native actions run, as for `build` (`none`: unsandboxed, where the build
    /// directory is visible to commands).
    #[arg(long)]
    sandbox: Option<String>,
    /// Rebuild once from scratch and compare with the subjects of this provenance file
    /// (written elsewhere by `wbuild build --provenance`); its targets and platforms are used
    /// unless targets are given.
    #[arg(long, value_name = "PROVENANCE")]
    against: Option<PathBuf>,
    /// With --against a signed provenance (DSSE envelope): a trusted public key (repeatable;
    /// [trust] keys of wbuild.toml are trusted too).
    #[arg(long, value_name = "KEY.pub", requires = "against")]
    key: Vec<String>,
}

/// One checked output.
#[derive(serde::Serialize)]
struct Checked {
    path: String,
    /// The action that produced it.
    action: String,
    mnemonic: String,
    /// BLAKE3 of the output in each run (`null` where the run did not produce it).
    digests: Vec<Option<String>>,
    reproducible: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_difference: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    likely_cause: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    diffoscope: Option<String>,
}

struct Run {
    /// Where the workspace copy was built (it may have been moved since) and its cache.
    built_at: PathBuf,
    cache: PathBuf,
    root: PathBuf,
    files: BTreeMap<String, (String, PathBuf)>,
}

fn copy_tree(src: &Path, dst: &Path, reverse: bool) -> Result<()> {
    wbuild_driver::infer::copy_tree(src, dst, &[], reverse)
        .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))
}

fn walk(dir: &Path, base: &Path, out: &mut BTreeMap<String, (String, PathBuf)>) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, base, out)?;
        } else {
            let rel = p.strip_prefix(base)?.to_string_lossy().into_owned();
            let bytes = std::fs::read(&p)?;
            out.insert(rel, (blake3::hash(&bytes).to_hex().to_string(), p));
        }
    }
    Ok(())
}

/// Recognisable reasons for two builds of a file to differ.
fn likely_cause(a: &[u8], b: &[u8], runs: &[Run]) -> String {
    let contains = |hay: &[u8], needle: &[u8]| {
        !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
    };
    for r in runs {
        for dir in [&r.built_at, &r.cache] {
            let dir = dir.to_string_lossy();
            if contains(a, dir.as_bytes()) || contains(b, dir.as_bytes()) {
                return "embeds the build path (where the workspace or the action ran); use paths relative to the working directory or -ffile-prefix-map".into();
            }
        }
    }
    let mut la: Vec<&[u8]> = a.split(|c| *c == b'\n').collect();
    let mut lb: Vec<&[u8]> = b.split(|c| *c == b'\n').collect();
    la.sort();
    lb.sort();
    if la == lb {
        return "the same lines in another order (random or file-system ordering); sort what the command lists".into();
    }
    // Around the first difference: digits that look like a time.
    let i = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(0);
    let window = |s: &[u8]| {
        let lo = i.saturating_sub(24);
        String::from_utf8_lossy(&s[lo..s.len().min(i + 24)]).into_owned()
    };
    let (wa, wb) = (window(a), window(b));
    let timeish = |w: &str| {
        let digits = w.chars().filter(|c| c.is_ascii_digit()).count();
        digits >= 6 || (w.contains(':') && digits >= 4) || w.contains("20")
    };
    if timeish(&wa) && timeish(&wb) {
        return "an embedded timestamp or date (digits that change between runs); use SOURCE_DATE_EPOCH".into();
    }
    "not recognised; compare the outputs (e.g. with diffoscope)".into()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Seeds the fresh cache `cache` with the compiled tool modules of `from` (module caches):
/// a compiled module is a function of the module and the engine alone and changes no output,
/// and compiling a large tool (an LLVM or a yosys) takes cranelift a minute, in every run.
/// Linked where possible, else copied; what is there already stays.
fn seed_modules(from: &[PathBuf], cache: &Path) -> Result<()> {
    let dst = cache.join("modules");
    std::fs::create_dir_all(&dst).with_context(|| format!("cannot create {}", dst.display()))?;
    for dir in from {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let target = dst.join(&name);
            if !name.to_string_lossy().ends_with(".cwasm")
                || !e.file_type().is_ok_and(|t| t.is_file())
                || target.exists()
            {
                continue;
            }
            if std::fs::hard_link(e.path(), &target).is_err() {
                let _ = std::fs::copy(e.path(), &target);
            }
        }
    }
    Ok(())
}

pub fn run(user_cache: &Path, cache_dir_flag: bool, args: &VerifyArgs) -> Result<i32> {
    if cache_dir_flag {
        eprintln!(
            "note: verify uses fresh empty caches; --cache-dir only lends them its compiled tool modules"
        );
    }
    let cwd = std::env::current_dir()?;
    let ws = Workspace::discover(&cwd)?;
    let vary: Vec<String> = if args.vary.is_empty() {
        VARIATIONS.iter().map(|s| s.to_string()).collect()
    } else {
        args.vary.clone()
    };
    for v in &vary {
        if !VARIATIONS.contains(&v.as_str()) {
            bail!(
                "--vary: unknown condition {v:?}; use any of {}",
                VARIATIONS.join(", ")
            );
        }
    }
    if let Some(p) = &args.against {
        return against(&ws, &cwd, args, p, user_cache);
    }
    if args.runs < 2 {
        bail!("--runs must be at least 2 to compare builds");
    }
    let has = |v: &str| vary.iter().any(|x| x == v);
    let exe = std::env::current_exe()?;
    let scratch = tempfile::Builder::new()
        .prefix("wbuild-verify-")
        .tempdir()?;
    let rel_cwd = cwd
        .strip_prefix(&ws.root)
        .unwrap_or(Path::new(""))
        .to_owned();
    let patterns = if args.patterns.is_empty() {
        vec!["//...".to_owned()]
    } else {
        args.patterns.clone()
    };
    let jobs_n = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let mut runs: Vec<Run> = Vec::new();
    let mut last_second = 0u64;
    for i in 0..args.runs {
        // The workspace, under a different path per run when `path` varies.
        let root = if has("path") {
            scratch
                .path()
                .join(format!("run{i}"))
                .join("d".repeat(i + 1))
                .join("ws")
        } else {
            scratch.path().join("same").join("ws")
        };
        if root.exists() && !has("path") {
            // Keep the earlier run's outputs for comparison.
            let keep = scratch.path().join(format!("kept{}", i - 1));
            std::fs::rename(root.parent().unwrap(), &keep)?;
            let prev = runs.last_mut().expect("earlier run");
            let old_root = prev.root.clone();
            let new_root = keep.join("ws");
            for (_, p) in prev.files.values_mut() {
                *p = new_root.join(p.strip_prefix(&old_root)?);
            }
            prev.root = new_root;
        }
        copy_tree(&ws.root, &root, has("order") && i % 2 == 1)?;
        if has("time") {
            // Start each run in a later second than the one before.
            loop {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs();
                if now > last_second {
                    last_second = now;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        let cache = scratch.path().join(format!("cache{i}"));
        let mut module_caches = vec![user_cache.join("modules")];
        module_caches.extend((0..i).map(|j| scratch.path().join(format!("cache{j}/modules"))));
        seed_modules(&module_caches, &cache)?;
        let mut cmd = Command::new(&exe);
        cmd.current_dir(root.join(&rel_cwd))
            .arg("--cache-dir")
            .arg(&cache)
            .arg("build")
            .args([
                "-j",
                &if has("jobs") && i % 2 == 0 { 1 } else { jobs_n }.to_string(),
            ]);
        if let Some(p) = &args.platform {
            cmd.args(["--platform", p]);
        }
        if let Some(s) = &args.sandbox {
            cmd.arg(format!("--sandbox={s}"));
        }
        cmd.args(&patterns);
        cmd.env_remove("WBUILD_CACHE");
        if has("env") {
            cmd.env("WBUILD_VERIFY_RUN", i.to_string())
                .env("TZ", if i % 2 == 0 { "UTC" } else { "Asia/Kolkata" })
                .env("LANG", if i % 2 == 0 { "C" } else { "de_DE.UTF-8" })
                .env("HOME", scratch.path().join(format!("home{i}")));
        }
        if has("umask") {
            let mask: libc_mode = if i % 2 == 0 { 0o022 } else { 0o077 };
            use std::os::unix::process::CommandExt;
            // SAFETY: umask(2) is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    umask(mask);
                    Ok(())
                });
            }
        }
        eprintln!(
            "verify: clean build {} of {} in {}",
            i + 1,
            args.runs,
            root.display()
        );
        let out = cmd.output().context("cannot run wbuild")?;
        if !out.status.success() {
            std::io::stderr().write_all(&out.stderr)?;
            bail!(
                "build {} of {} failed (above); verify compares successful builds",
                i + 1,
                args.runs
            );
        }
        let mut files = BTreeMap::new();
        walk(
            &root.join("wbuild-out"),
            &root.join("wbuild-out"),
            &mut files,
        )?;
        runs.push(Run {
            built_at: root.clone(),
            cache,
            root,
            files,
        });
    }

    // Which action produced each output.
    let analysis_dir = scratch.path().join("analysis");
    let parsed: Vec<wbuild_graph::TargetPattern> = patterns
        .iter()
        .map(|p| wbuild_graph::TargetPattern::parse(p, &ws.package_of_dir(&cwd)))
        .collect::<Result<_, _>>()?;
    let signature = wbuild_graph::workspace_signature(&ws)?;
    let (graph, _) =
        wbuild_graph::load_and_analyse_cached(&ws, &parsed, false, &analysis_dir, &signature)
            .map(|a| (a.graph, a.roots))?;
    let producer = |path: &str| -> (String, String) {
        // Outputs for another platform live under wbuild-out/<platform>/.
        let ws_path = path
            .split_once('/')
            .filter(|(first, _)| first.starts_with("linux-"))
            .map_or(path, |(_, rest)| rest);
        match graph.producers.get(ws_path) {
            Some((i, label)) => match graph.actions.get(*i) {
                Some(a) => (a.name(), a.mnemonic.clone()),
                None => (label.to_string(), String::new()),
            },
            None => ("(unknown)".into(), String::new()),
        }
    };

    let has_diffoscope = Command::new("diffoscope")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut all_paths: Vec<&String> = runs.iter().flat_map(|r| r.files.keys()).collect();
    all_paths.sort();
    all_paths.dedup();
    let mut checked = Vec::new();
    for path in all_paths {
        let digests: Vec<Option<String>> = runs
            .iter()
            .map(|r| r.files.get(path).map(|(d, _)| d.clone()))
            .collect();
        let reproducible = digests.iter().all(|d| d.is_some() && *d == digests[0]);
        let (action, mnemonic) = producer(path);
        let mut c = Checked {
            path: path.clone(),
            action,
            mnemonic,
            digests,
            reproducible,
            first_difference: None,
            likely_cause: None,
            diffoscope: None,
        };
        if !reproducible
            && let (Some((_, a)), Some(other)) = (
                runs[0].files.get(path),
                runs.iter().skip(1).find_map(|r| {
                    r.files
                        .get(path)
                        .filter(|(d, _)| Some(d) != runs[0].files.get(path).map(|(d, _)| d))
                }),
            )
        {
            let (ba, bb) = (std::fs::read(a)?, std::fs::read(&other.1)?);
            let first = ba
                .iter()
                .zip(&bb)
                .position(|(x, y)| x != y)
                .unwrap_or(ba.len().min(bb.len()));
            c.first_difference = Some(first as u64);
            c.likely_cause = Some(likely_cause(&ba, &bb, &runs));
            if has_diffoscope {
                let out = Command::new("diffoscope")
                    .arg("--text")
                    .arg("-")
                    .arg(a)
                    .arg(&other.1)
                    .output()?;
                let text = String::from_utf8_lossy(&out.stdout);
                c.diffoscope = Some(text.chars().take(4000).collect());
            }
        }
        checked.push(c);
    }

    let bad: Vec<&Checked> = checked.iter().filter(|c| !c.reproducible).collect();
    for c in &bad {
        println!(
            "NOT REPRODUCIBLE {} (from {}{}): first difference at byte {}; likely cause: {}",
            c.path,
            c.action,
            if c.mnemonic.is_empty() {
                String::new()
            } else {
                format!(", {}", c.mnemonic)
            },
            c.first_difference.map_or("-".into(), |o| o.to_string()),
            c.likely_cause
                .as_deref()
                .unwrap_or("an output is missing in some runs")
        );
        if let Some(d) = &c.diffoscope {
            for l in d.lines().take(40) {
                println!("  | {l}");
            }
        }
    }
    println!(
        "verify: {} outputs checked over {} clean builds (varying {}): {} reproducible, {} not",
        checked.len(),
        args.runs,
        vary.join(", "),
        checked.len() - bad.len(),
        bad.len()
    );
    if let Some(p) = &args.json {
        let report = serde_json::json!({
            "runs": args.runs,
            "vary": vary,
            "outputs": checked,
            "reproducible": bad.is_empty(),
        });
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(p) = &args.junit {
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        x.push_str(&format!(
            "<testsuites><testsuite name=\"wbuild verify\" tests=\"{}\" failures=\"{}\">\n",
            checked.len(),
            bad.len()
        ));
        for c in &checked {
            x.push_str(&format!(
                "  <testcase classname=\"{}\" name=\"{}\">",
                xml_escape(&c.action),
                xml_escape(&c.path)
            ));
            if !c.reproducible {
                x.push_str(&format!(
                    "<failure message=\"{}\">{}</failure>",
                    xml_escape(&format!(
                        "not reproducible: first difference at byte {}",
                        c.first_difference.map_or("-".into(), |o| o.to_string())
                    )),
                    xml_escape(c.likely_cause.as_deref().unwrap_or(""))
                ));
            }
            x.push_str("</testcase>\n");
        }
        x.push_str("</testsuite></testsuites>\n");
        std::fs::write(p, x).with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(if bad.is_empty() { 0 } else { 1 })
}

#[allow(non_camel_case_types)]
type libc_mode = u32;

unsafe extern "C" {
    fn umask(mask: libc_mode) -> libc_mode;
}

/// `verify --against`: one clean rebuild compared with a provenance statement's subjects.
fn against(
    ws: &Workspace,
    cwd: &Path,
    args: &VerifyArgs,
    file: &Path,
    user_cache: &Path,
) -> Result<i32> {
    let (st, signers) = wbuild_driver::provenance::read(file, &args.key, ws)?;
    if !signers.is_empty() {
        println!(
            "signature ok: {} signed by {}",
            file.display(),
            signers.join(", ")
        );
    }
    if st["_type"] != wbuild_driver::provenance::STATEMENT_TYPE {
        bail!(
            "{} is not an in-toto statement (_type is {})",
            file.display(),
            st["_type"]
        );
    }
    let params = &st["predicate"]["buildDefinition"]["externalParameters"];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let targets = if args.patterns.is_empty() {
        strings(&params["targets"])
    } else {
        args.patterns.clone()
    };
    let platforms = strings(&params["platforms"]);
    let scratch = tempfile::Builder::new()
        .prefix("wbuild-verify-")
        .tempdir()?;
    let root = scratch.path().join("ws");
    copy_tree(&ws.root, &root, false)?;
    let rel_cwd = cwd.strip_prefix(&ws.root).unwrap_or(Path::new(""));
    seed_modules(&[user_cache.join("modules")], &scratch.path().join("cache"))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.current_dir(root.join(rel_cwd))
        .arg("--cache-dir")
        .arg(scratch.path().join("cache"))
        .arg("build")
        .env_remove("WBUILD_CACHE");
    if !platforms.is_empty() {
        cmd.args(["--platform", &platforms.join(",")]);
    }
    cmd.args(&targets);
    eprintln!(
        "verify: clean rebuild of {} in {}",
        targets.join(" "),
        root.display()
    );
    let out = cmd.output().context("cannot run wbuild")?;
    if !out.status.success() {
        std::io::stderr().write_all(&out.stderr)?;
        bail!("the rebuild failed (above)");
    }
    let subjects = st["subject"].as_array().cloned().unwrap_or_default();
    let mut differing = 0;
    for s in &subjects {
        let name = s["name"].as_str().unwrap_or_default();
        let claimed = s["digest"]["sha256"].as_str().unwrap_or_default();
        let here = root.join(name);
        let ours = if here.is_file() {
            wbuild_driver::provenance::digest_set(&here)?["sha256"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        } else {
            String::new()
        };
        if ours != claimed {
            differing += 1;
            println!(
                "DIFFERS {name}: the provenance says sha256:{claimed}, the rebuild here gives {}",
                if ours.is_empty() {
                    "no such file".to_owned()
                } else {
                    format!("sha256:{ours}")
                }
            );
        }
    }
    println!(
        "verify: {} subjects of {} rebuilt here: {} match, {differing} differ",
        subjects.len(),
        file.display(),
        subjects.len() - differing
    );
    Ok(if differing == 0 { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_caches_get_the_compiled_modules_and_nothing_else() {
        let t = tempfile::tempdir().unwrap();
        let user = t.path().join("user/modules");
        let earlier = t.path().join("cache0/modules");
        std::fs::create_dir_all(&user).unwrap();
        std::fs::create_dir_all(&earlier).unwrap();
        std::fs::write(user.join("a-1.cwasm"), "a").unwrap();
        std::fs::write(user.join("notes.txt"), "not a module").unwrap();
        std::fs::create_dir(user.join("dir.cwasm")).unwrap();
        std::fs::write(earlier.join("a-1.cwasm"), "a from an earlier run").unwrap();
        std::fs::write(earlier.join("b-1.cwasm"), "b").unwrap();
        let cache = t.path().join("cache1");
        seed_modules(&[user.clone(), earlier, t.path().join("missing")], &cache).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(cache.join("modules"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a-1.cwasm", "b-1.cwasm"]);
        // The first source wins; the user's file is untouched.
        assert_eq!(
            std::fs::read_to_string(cache.join("modules/a-1.cwasm")).unwrap(),
            "a"
        );
        assert_eq!(
            std::fs::read_to_string(user.join("a-1.cwasm")).unwrap(),
            "a"
        );
    }
}
