//! Results and commands from outside this process are checked before anything touches the
//! disk: an action-cache entry (local index, remote cache), a remote executor's result and a
//! leased `Command` may name only normalised relative paths, and a result exactly the
//! action's declared outputs.

use std::collections::{BTreeSet, HashSet};

use wbuild_store::{Digest, DigestFunction, reapi};

/// Why a result cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidResult {
    #[error("output path {0:?} is not a normalised relative path")]
    BadPath(String),
    #[error("output {0} is not a declared output of the action")]
    Undeclared(String),
    #[error("output {0} is named twice")]
    Duplicate(String),
    #[error("declared output {0} is missing")]
    Missing(String),
    #[error("output {0} has no valid digest")]
    BadDigest(String),
    #[error("it holds output directories or symlinks (the action declares files only)")]
    NotFiles,
}

/// Whether `p` is a normalised relative path: no empty, `.` or `..` component, no leading
/// `/`, no NUL.
pub fn is_normalised(p: &str) -> bool {
    !p.is_empty()
        && !p.contains('\0')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// The outputs of `result` as `(path, digest, executable)`, in the order of `declared`, if
/// they are exactly the declared outputs: every path normalised, declared and named once,
/// every declared output present with a digest of function `f`, and nothing but files.
pub fn validate_result(
    f: DigestFunction,
    declared: &[String],
    result: &reapi::ActionResult,
) -> Result<Vec<(String, Digest, bool)>, InvalidResult> {
    #[allow(deprecated)]
    if !result.output_directories.is_empty()
        || !result.output_symlinks.is_empty()
        || !result.output_file_symlinks.is_empty()
        || !result.output_directory_symlinks.is_empty()
    {
        return Err(InvalidResult::NotFiles);
    }
    let declared_set: HashSet<&str> = declared.iter().map(String::as_str).collect();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut found = Vec::new();
    for of in &result.output_files {
        let p = of.path.as_str();
        if !is_normalised(p) {
            return Err(InvalidResult::BadPath(of.path.clone()));
        }
        if !declared_set.contains(p) {
            return Err(InvalidResult::Undeclared(of.path.clone()));
        }
        if !seen.insert(p) {
            return Err(InvalidResult::Duplicate(of.path.clone()));
        }
        let d = of
            .digest
            .as_ref()
            .and_then(|d| Digest::from_proto(f, d).ok())
            .ok_or_else(|| InvalidResult::BadDigest(of.path.clone()))?;
        found.push((of.path.clone(), d, of.is_executable));
    }
    let mut out = Vec::with_capacity(declared.len());
    for want in declared {
        match found.iter().find(|(p, _, _)| p == want) {
            Some(x) => out.push(x.clone()),
            None => return Err(InvalidResult::Missing(want.clone())),
        }
    }
    Ok(out)
}

/// Why a leased `Command` is refused before anything touches the disk.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCommand {
    #[error(
        "the command declares output directories {0:?}; this worker runs actions whose outputs are files"
    )]
    OutputDirectories(Vec<String>),
    #[error(
        "the command's working directory is {0:?}; this worker runs commands at the input root only"
    )]
    WorkingDirectory(String),
    #[error("{what} {path:?} is not a normalised relative path")]
    NotNormalised { what: &'static str, path: String },
    #[error("output path {0} is named twice")]
    NamedTwice(String),
    #[error("output path {0} is also an input")]
    OutputIsInput(String),
    #[error("output path {0} is a directory of another input or output")]
    OutputHoldsPaths(String),
    #[error("the command has no arguments")]
    NoArguments,
    #[error("argument {0:?} holds a NUL byte")]
    NulInArgument(String),
    #[error("bad environment variable name {0:?}")]
    BadEnvName(String),
    #[error("environment variable {0} holds a NUL byte")]
    NulInEnvValue(String),
}

/// Checks what a leased `Command` names before anything touches the disk: the outputs
/// (`output_paths`, and the deprecated `output_files`) normalised relative paths, named
/// once, none of them an input or a directory holding another path; no output directories;
/// a non-empty argv without NUL bytes; environment names non-empty without `=` or NUL; no
/// working directory (commands run at the input root). `inputs`: the input tree's files.
pub fn validate_command(
    command: &reapi::Command,
    inputs: &BTreeSet<&str>,
) -> Result<(), InvalidCommand> {
    #[allow(deprecated)]
    let (files, dirs) = (&command.output_files, &command.output_directories);
    if !dirs.is_empty() {
        return Err(InvalidCommand::OutputDirectories(dirs.clone()));
    }
    if !command.working_directory.is_empty() {
        return Err(InvalidCommand::WorkingDirectory(
            command.working_directory.clone(),
        ));
    }
    let not_normalised = |what, p: &str| InvalidCommand::NotNormalised {
        what,
        path: p.to_owned(),
    };
    let mut outputs: BTreeSet<&str> = BTreeSet::new();
    for p in &command.output_paths {
        if !is_normalised(p) {
            return Err(not_normalised("output path", p));
        }
        if !outputs.insert(p) {
            return Err(InvalidCommand::NamedTwice(p.clone()));
        }
    }
    for p in files {
        if !is_normalised(p) {
            return Err(not_normalised("output file", p));
        }
    }
    for p in &outputs {
        if inputs.contains(p) {
            return Err(InvalidCommand::OutputIsInput((*p).to_owned()));
        }
        let under = format!("{p}/");
        let holds = |set: &BTreeSet<&str>| {
            set.range(under.as_str()..)
                .next()
                .is_some_and(|q| q.starts_with(&under))
        };
        if holds(&outputs) || holds(inputs) {
            return Err(InvalidCommand::OutputHoldsPaths((*p).to_owned()));
        }
    }
    if command.arguments.is_empty() {
        return Err(InvalidCommand::NoArguments);
    }
    if let Some(a) = command.arguments.iter().find(|a| a.contains('\0')) {
        return Err(InvalidCommand::NulInArgument(a.clone()));
    }
    for e in &command.environment_variables {
        if e.name.is_empty() || e.name.contains('=') || e.name.contains('\0') {
            return Err(InvalidCommand::BadEnvName(e.name.clone()));
        }
        if e.value.contains('\0') {
            return Err(InvalidCommand::NulInEnvValue(e.name.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: DigestFunction = DigestFunction::Blake3;

    fn file(path: &str, bytes: &str) -> reapi::OutputFile {
        reapi::OutputFile {
            path: path.to_owned(),
            digest: Some(Digest::of(F, bytes.as_bytes()).to_proto()),
            is_executable: false,
            contents: Vec::new(),
            node_properties: None,
        }
    }

    fn result(files: &[(&str, &str)]) -> reapi::ActionResult {
        reapi::ActionResult {
            output_files: files.iter().map(|(p, b)| file(p, b)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn hostile_results_are_refused() {
        let declared = vec!["gen/out.txt".to_owned(), "gen/b.txt".to_owned()];
        let ok = result(&[("gen/b.txt", "b"), ("gen/out.txt", "o")]);
        let v = validate_result(F, &declared, &ok).unwrap();
        assert_eq!(v[0].0, "gen/out.txt");
        assert_eq!(v[1].1, Digest::of(F, b"b"));
        let bad = |files: &[(&str, &str)]| validate_result(F, &declared, &result(files));
        for p in [
            "/tmp/x",
            "../../x",
            "gen/../gen/out.txt",
            "gen//out.txt",
            "./gen/out.txt",
            "gen/out.txt/",
            "",
            "gen/\0",
        ] {
            assert_eq!(
                bad(&[("gen/out.txt", "o"), ("gen/b.txt", "b"), (p, "x")]),
                Err(InvalidResult::BadPath(p.to_owned())),
                "{p:?}"
            );
        }
        assert_eq!(
            bad(&[("gen/out.txt", "o"), ("gen/b.txt", "b"), ("gen/c.txt", "c")]),
            Err(InvalidResult::Undeclared("gen/c.txt".into()))
        );
        assert_eq!(
            bad(&[
                ("gen/out.txt", "o"),
                ("gen/b.txt", "b"),
                ("gen/out.txt", "p")
            ]),
            Err(InvalidResult::Duplicate("gen/out.txt".into()))
        );
        assert_eq!(
            bad(&[("gen/out.txt", "o")]),
            Err(InvalidResult::Missing("gen/b.txt".into()))
        );
        let mut no_digest = ok.clone();
        no_digest.output_files[0].digest = None;
        assert_eq!(
            validate_result(F, &declared, &no_digest),
            Err(InvalidResult::BadDigest("gen/b.txt".into()))
        );
        let mut dirs = ok.clone();
        dirs.output_directories.push(reapi::OutputDirectory {
            path: "gen".into(),
            ..Default::default()
        });
        assert_eq!(
            validate_result(F, &declared, &dirs),
            Err(InvalidResult::NotFiles)
        );
        // A declared output that is itself not normalised can never be satisfied.
        let odd = vec!["../x".to_owned()];
        assert_eq!(
            validate_result(F, &odd, &result(&[("../x", "x")])),
            Err(InvalidResult::BadPath("../x".into()))
        );
    }

    fn command(outputs: &[&str]) -> reapi::Command {
        reapi::Command {
            arguments: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            output_paths: outputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn hostile_commands_are_refused() {
        let inputs: BTreeSet<&str> = ["src/a.c", "src/b.c"].into();
        assert!(validate_command(&command(&["out/a.o", "out/b.o"]), &inputs).is_ok());
        for outs in [
            &["../../x"][..],
            &["/etc/passwd"],
            &["out/../../x"],
            &["out/a.o", "out/a.o"],
            &["src/a.c"],
            &["src"],
            &["out", "out/a.o"],
            &[""],
        ] {
            let e = validate_command(&command(outs), &inputs);
            assert!(e.is_err(), "{outs:?}");
            assert!(
                e.unwrap_err().to_string().contains("output path"),
                "{outs:?}"
            );
        }
        let mut c = command(&["a"]);
        c.working_directory = "..".into();
        assert_eq!(
            validate_command(&c, &inputs).unwrap_err(),
            InvalidCommand::WorkingDirectory("..".into())
        );
        let mut c = command(&["a"]);
        #[allow(deprecated)]
        c.output_files.push("../y".into());
        assert!(validate_command(&c, &inputs).is_err());
        let mut c = command(&["a"]);
        #[allow(deprecated)]
        c.output_directories.push("d".into());
        assert!(validate_command(&c, &inputs).is_err());
        let mut c = command(&["a"]);
        c.environment_variables
            .push(reapi::command::EnvironmentVariable {
                name: "A=B".into(),
                value: "x".into(),
            });
        assert!(validate_command(&c, &inputs).is_err());
        let mut c = command(&["a"]);
        c.arguments.clear();
        assert!(validate_command(&c, &inputs).is_err());
    }
}
