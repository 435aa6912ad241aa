//! wb-template: renders a `{{key}}` template into a file.
//!
//! ```text
//! wb-template [--vars FILE]... [--set KEY=VALUE]... [--prelude NAME] TEMPLATE -o OUT
//! ```
//!
//! Values come from vars files (`key = value` lines, `#` comments; later files override
//! earlier ones) and `--set` (overrides every vars file). `{{wb.template}}` and
//! `{{wb.output}}` are the TEMPLATE and OUT paths as given. An unknown key is an error naming
//! `file:line`. `--prelude NAME` renders the tool data file `/share/wb-template/NAME` (override
//! the directory with `$WB_TEMPLATE_SHARE`, e.g. for native runs) and puts it before the
//! template. All file access goes through `wbuild-sdk`.
//!
//! It must never touch a file it was not told about (TEMPLATE, --vars files, the one prelude)
//! and never let the output depend on anything but those files and the command line.

#![forbid(unsafe_code)]

mod render;

use std::collections::BTreeMap;

use wbuild_sdk::{self as sdk, OrFail};

/// Where wbuild presents this tool's data files (`wasi_tool(data_dir = "/share")`).
const DEFAULT_SHARE: &str = "/share/wb-template";

const USAGE: &str =
    "usage: wb-template [--vars FILE]... [--set KEY=VALUE]... [--prelude NAME] TEMPLATE -o OUT";

#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    vars_files: Vec<String>,
    sets: Vec<String>,
    prelude: Option<String>,
    template: String,
    output: String,
}

/// `Ok(None)` means `--help` was asked for.
fn parse_args(args: &[String]) -> Result<Option<Options>, String> {
    let mut opts = Options::default();
    let mut template = None;
    let mut output = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().cloned().ok_or(format!("{name} needs a value")),
            }
        };
        match flag {
            "-h" | "--help" => return Ok(None),
            "--vars" => opts.vars_files.push(value("--vars")?),
            "--set" => opts.sets.push(value("--set")?),
            "--prelude" => {
                if opts.prelude.is_some() {
                    return Err("--prelude given twice".to_string());
                }
                opts.prelude = Some(value("--prelude")?);
            }
            "-o" | "--output" => {
                if output.is_some() {
                    return Err("-o given twice".to_string());
                }
                output = Some(value("-o")?);
            }
            _ if flag.starts_with('-') && flag.len() > 1 => {
                return Err(format!("unknown option {arg:?}"));
            }
            _ => {
                if let Some(first) = &template {
                    return Err(format!(
                        "more than one TEMPLATE given ({first:?} and {arg:?})"
                    ));
                }
                template = Some(arg.clone());
            }
        }
    }
    opts.template = template.ok_or("no TEMPLATE given")?;
    opts.output = output.ok_or("no output given (-o OUT)")?;
    Ok(Some(opts))
}

/// A prelude name must be a plain file name inside the share directory.
fn check_prelude_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('/') || name.contains('\\') || name.starts_with('.') {
        return Err(format!(
            "--prelude {name:?}: expected a file name in the wb-template share directory, such as c-header.txt"
        ));
    }
    Ok(())
}

fn main() {
    let opts = match parse_args(&sdk::args()) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            println!("{USAGE}");
            return;
        }
        Err(e) => sdk::fail(format!("{e}\n{USAGE}")),
    };

    let mut vars = BTreeMap::new();
    for file in &opts.vars_files {
        let text = sdk::read_to_string(file).or_fail();
        for (k, v) in render::parse_vars(&text, file).or_fail() {
            vars.insert(k, v);
        }
    }
    for set in &opts.sets {
        let (k, v) = render::parse_set(set).or_fail();
        vars.insert(k, v);
    }
    vars.insert("wb.template".to_string(), opts.template.clone());
    vars.insert("wb.output".to_string(), opts.output.clone());

    let mut out = String::new();
    if let Some(name) = &opts.prelude {
        check_prelude_name(name).or_fail();
        let dir = sdk::env("WB_TEMPLATE_SHARE").unwrap_or_else(|| DEFAULT_SHARE.to_string());
        let path = format!("{}/{name}", dir.trim_end_matches('/'));
        let text = match sdk::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Only on failure: list the directory to say what is available.
                let available = sdk::list(&dir)
                    .map(|names| names.join(", "))
                    .unwrap_or_else(|_| format!("none, {dir} is not present"));
                sdk::fail(format!(
                    "no prelude {name:?} at {path} (available: {available}); wbuild presents a tool's data files under its wasi_tool data_dir, /share by default"
                ))
            }
            Err(e) => sdk::fail(e),
        };
        out.push_str(&render::render(&text, &path, &vars).or_fail());
    }
    let text = sdk::read_to_string(&opts.template).or_fail();
    out.push_str(&render::render(&text, &opts.template, &vars).or_fail());
    sdk::write(&opts.output, out.as_bytes()).or_fail();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn parses_full_command_line() {
        let opts = parse_args(&args(&[
            "--vars",
            "a.vars",
            "--set",
            "k=v",
            "--vars=b.vars",
            "--prelude",
            "c-header.txt",
            "gen/t.tmpl",
            "-o",
            "gen/t.h",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            opts,
            Options {
                vars_files: vec!["a.vars".into(), "b.vars".into()],
                sets: vec!["k=v".into()],
                prelude: Some("c-header.txt".into()),
                template: "gen/t.tmpl".into(),
                output: "gen/t.h".into(),
            }
        );
    }

    #[test]
    fn rejects_bad_command_lines() {
        assert!(parse_args(&args(&["t.tmpl"])).unwrap_err().contains("-o"));
        assert!(
            parse_args(&args(&["-o", "x"]))
                .unwrap_err()
                .contains("TEMPLATE")
        );
        assert!(
            parse_args(&args(&["a", "b", "-o", "x"]))
                .unwrap_err()
                .contains("more than one")
        );
        assert!(
            parse_args(&args(&["--frob", "a", "-o", "x"]))
                .unwrap_err()
                .contains("unknown option")
        );
        assert!(
            parse_args(&args(&["a", "-o"]))
                .unwrap_err()
                .contains("needs a value")
        );
        assert_eq!(parse_args(&args(&["--help"])).unwrap(), None);
    }

    #[test]
    fn prelude_names_are_plain_file_names() {
        assert!(check_prelude_name("c-header.txt").is_ok());
        assert!(check_prelude_name("../etc/passwd").is_err());
        assert!(check_prelude_name("a/b").is_err());
        assert!(check_prelude_name("").is_err());
    }

    #[test]
    fn shipped_preludes_render_with_builtin_keys() {
        let mut vars = BTreeMap::new();
        vars.insert("wb.template".to_string(), "gen/config.h.tmpl".to_string());
        vars.insert("wb.output".to_string(), "gen/config.h".to_string());
        for (name, text) in [
            (
                "c-header.txt",
                include_str!("../share/wb-template/c-header.txt"),
            ),
            (
                "hash-comment.txt",
                include_str!("../share/wb-template/hash-comment.txt"),
            ),
        ] {
            let out = render::render(text, name, &vars).unwrap();
            assert!(out.contains("gen/config.h.tmpl"), "{name}: {out}");
            assert!(out.contains("do not edit"), "{name}: {out}");
        }
    }
}
