//! Provenance of a build: an in-toto Statement (v1) with an SLSA provenance (v1) predicate
//! for what a build produced (`wbuild build --provenance FILE`): the subjects are the
//! requested targets' outputs with their SHA-256 (and BLAKE3) digests; the resolved
//! dependencies are the source files the actions read (tool modules and data included) and
//! the identity of each native toolchain. `wbuild verify --against FILE` reads it back
//! ([`read`]) and compares its rebuild with the subjects.

use std::path::Path;

use sha2::Digest as _;

/// Why provenance could not be written or read; each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    /// A file that could not be read or written.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A file (or an envelope's payload) that is not JSON.
    #[error("{what}")]
    NotJson {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// The statement could not be serialised.
    #[error(transparent)]
    Serialise(#[from] serde_json::Error),
    /// Signing or checking a signature failed (the message names the key or file).
    #[error(transparent)]
    Signature(#[from] wbuild_bundle::BundleError),
    /// The current directory (relative `--key` paths) could not be read.
    #[error(transparent)]
    CurrentDir(std::io::Error),
    /// The file cannot be checked as asked: say what to pass.
    #[error("{0}")]
    Invalid(String),
}

type Result<T, E = ProvenanceError> = std::result::Result<T, E>;

fn io(what: String) -> impl FnOnce(std::io::Error) -> ProvenanceError {
    move |source| ProvenanceError::Io { what, source }
}

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
pub const BUILD_TYPE: &str = "https://wbuild.dev/provenance/build/v1";

/// SHA-256 and BLAKE3 of a file, as an in-toto digest set.
pub fn digest_set(path: &Path) -> Result<serde_json::Value> {
    let bytes = std::fs::read(path).map_err(io(format!("cannot read {}", path.display())))?;
    Ok(serde_json::json!({
        "sha256": hex(&sha2::Sha256::digest(&bytes)),
        "blake3": blake3::hash(&bytes).to_hex().to_string(),
    }))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What one build did, for its provenance.
pub struct BuildFacts<'a> {
    /// The workspace, with its pinned toolchains.
    pub ws: &'a wbuild_graph::Workspace,
    /// Output files (paths relative to the workspace root, under wbuild-out/) of the targets.
    pub subjects: Vec<String>,
    /// Source files read (workspace paths).
    pub sources: &'a [String],
    pub patterns: &'a [String],
    /// (platform name, toolchain identity when native actions ran for it).
    pub platforms: Vec<(String, Option<String>)>,
    pub source_date_epoch: u64,
    pub sandbox: &'a str,
    pub build_id: u64,
    pub started: std::time::SystemTime,
}

/// `t` as an RFC 3339 UTC time to the second (`2026-11-23T08:30:45Z`).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Payload type of a DSSE envelope holding an in-toto statement.
pub const DSSE_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// Writes the statement to `out`; with `sign_key` (a minisign secret key, as from
/// `wbuild toolchain keygen`), as a DSSE envelope signed with it.
pub fn write(out: &Path, facts: &BuildFacts<'_>, sign_key: Option<&Path>) -> Result<()> {
    let mut subjects = Vec::new();
    for s in &facts.subjects {
        subjects.push(serde_json::json!({
            "name": s,
            "digest": digest_set(&facts.ws.path(s))?,
        }));
    }
    let mut deps = Vec::new();
    for s in facts.sources {
        // Files of pinned toolchains are covered by the bundle's digest below.
        if facts.ws.external_of(s).is_some() {
            continue;
        }
        deps.push(serde_json::json!({
            "uri": format!("file:{s}"),
            "digest": digest_set(&facts.ws.path(s))?,
        }));
    }
    for (name, ext) in &facts.ws.externals {
        let source = facts
            .ws
            .config
            .toolchains
            .get(name)
            .map_or(String::new(), |p| p.source.clone());
        deps.push(serde_json::json!({
            "name": format!("toolchain:{name}"),
            "uri": source,
            "digest": { "sha256": ext.digest.trim_start_matches("sha256:") },
        }));
    }
    for (p, id) in &facts.platforms {
        if let Some(id) = id {
            deps.push(serde_json::json!({
                "uri": format!("wbuild:toolchain/{p}"),
                "digest": { "blake3": id },
            }));
        }
    }
    let statement = serde_json::json!({
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "targets": facts.patterns,
                    "platforms": facts.platforms.iter().map(|(p, _)| p).collect::<Vec<_>>(),
                },
                "internalParameters": {
                    "source_date_epoch": facts.source_date_epoch,
                    "sandbox": facts.sandbox,
                    "wasi_executor": wbuild_exec_wasi::EXECUTOR_VERSION,
                    "native_sandbox": wbuild_exec_native::SANDBOX_VERSION,
                },
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": { "id": format!("wbuild/{}", env!("CARGO_PKG_VERSION")) },
                "metadata": {
                    "invocationId": facts.build_id.to_string(),
                    "startedOn": rfc3339(facts.started),
                    "finishedOn": rfc3339(std::time::SystemTime::now()),
                },
            },
        },
    });
    let text = match sign_key {
        None => serde_json::to_string_pretty(&statement)? + "\n",
        Some(key) => {
            let body = serde_json::to_vec(&statement)?;
            let env = wbuild_bundle::sign::dsse_sign(key, DSSE_PAYLOAD_TYPE, &body)?;
            serde_json::to_string_pretty(&env)? + "\n"
        }
    };
    std::fs::write(out, text).map_err(io(format!("cannot write {}", out.display())))
}

/// Reads a provenance file: a plain statement, or a DSSE envelope whose signature must
/// verify with one of `keys` (public key files or `RW...` keys) or the workspace's trusted
/// keys. Returns the statement and the ids of the keys that verified it.
pub fn read(
    file: &Path,
    keys: &[String],
    ws: &wbuild_graph::Workspace,
) -> Result<(serde_json::Value, Vec<String>)> {
    let text =
        std::fs::read_to_string(file).map_err(io(format!("cannot read {}", file.display())))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ProvenanceError::NotJson {
            what: format!("{} is not JSON", file.display()),
            source,
        })?;
    if v.get("payloadType").is_none() {
        if !keys.is_empty() {
            return Err(ProvenanceError::Invalid(format!(
                "{} is an unsigned statement, but --key asks for a signature check",
                file.display()
            )));
        }
        return Ok((v, Vec::new()));
    }
    let cwd = std::env::current_dir().map_err(ProvenanceError::CurrentDir)?;
    let mut trust = wbuild_bundle::Trust::default();
    for k in keys {
        trust
            .keys
            .push(wbuild_bundle::sign::load_public_key(k, &cwd)?);
    }
    for k in &ws.config.trust.keys {
        trust
            .keys
            .push(wbuild_bundle::sign::load_public_key(k, &ws.root)?);
    }
    if trust.keys.is_empty() {
        return Err(ProvenanceError::Invalid(format!(
            "{} is a signed envelope: pass --key KEY.pub (or list keys under [trust] in wbuild.toml) to check it",
            file.display()
        )));
    }
    let what = file.display().to_string();
    let (payload_type, body, ids) = wbuild_bundle::sign::dsse_verify(&v, &trust, &what)?;
    if payload_type != DSSE_PAYLOAD_TYPE {
        return Err(ProvenanceError::Invalid(format!(
            "{what}: payload type is {payload_type}, not {DSSE_PAYLOAD_TYPE}"
        )));
    }
    let st = serde_json::from_slice(&body).map_err(|source| ProvenanceError::NotJson {
        what: format!("{what}: payload is not JSON"),
        source,
    })?;
    Ok((st, ids))
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_422_645);
        assert_eq!(super::rfc3339(t), "2026-11-23T08:30:45Z");
        assert_eq!(
            super::rfc3339(std::time::UNIX_EPOCH),
            "1970-01-01T00:00:00Z"
        );
    }
}
