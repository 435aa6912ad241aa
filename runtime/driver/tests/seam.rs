//! The driver's API at its seam with the CLI: platform passes from flags, attributes and
//! `[build] platform`; the cross-toolchain check; merging pass summaries; `wbuild.lock`
//! and pinned toolchains that cannot be trusted; provenance files that must not be accepted.

use std::path::Path;

use wbuild_driver::platform::{
    check_cross_toolchain_in, default_platform, flag_platforms, platform_passes,
};
use wbuild_driver::toolchain::resolve_workspace;
use wbuild_driver::{DriverError, provenance};
use wbuild_graph::{ActionGraph, Label, Workspace};
use wbuild_sched::Platform;

fn workspace(toml: &str) -> (tempfile::TempDir, Workspace) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wbuild.toml"), toml).unwrap();
    let ws = Workspace::discover(dir.path()).unwrap();
    (dir, ws)
}

fn label(s: &str) -> Label {
    Label::parse(s, "").unwrap()
}

/// The platform that is not this machine's.
fn other() -> Platform {
    if Platform::host() == Platform::LinuxX86_64 {
        Platform::LinuxArm64
    } else {
        Platform::LinuxX86_64
    }
}

#[test]
fn platform_flags_are_trimmed_deduplicated_and_ordered() {
    let got = flag_platforms(&[
        "linux-arm64".into(),
        " linux-x86_64".into(),
        "linux-aarch64".into(),
    ])
    .unwrap();
    assert_eq!(got, vec![Platform::LinuxArm64, Platform::LinuxX86_64]);
    assert!(flag_platforms(&[]).unwrap().is_empty());
    let e = flag_platforms(&["linux-sparc".into()])
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("--platform: "), "{e}");
    assert!(e.contains("linux-sparc"), "{e}");
}

#[test]
fn flags_build_every_root_for_each_platform() {
    let (_d, ws) = workspace("");
    let mut g = ActionGraph::default();
    // An attribute does not narrow what --platform asks for.
    g.root_platforms
        .insert(label("//a:a"), "linux-arm64".into());
    let roots = [label("//a:a"), label("//b:b")];
    let flags = [Platform::LinuxX86_64, Platform::LinuxArm64];
    let passes = platform_passes(&ws, &flags, &g, &roots).unwrap();
    assert_eq!(
        passes,
        vec![(Platform::LinuxX86_64, None), (Platform::LinuxArm64, None)]
    );
}

#[test]
fn attributes_group_roots_and_the_rest_take_the_default() {
    let (_d, ws) = workspace("");
    let mut g = ActionGraph::default();
    let o = other();
    g.root_platforms.insert(label("//a:a"), o.name().into());
    let roots = [label("//a:a"), label("//b:b"), label("//c:c")];
    let mut passes = platform_passes(&ws, &[], &g, &roots).unwrap();
    passes.sort_by_key(|(p, _)| p.name());
    let mut want = vec![
        (o, Some(vec![label("//a:a")])),
        (Platform::host(), Some(vec![label("//b:b"), label("//c:c")])),
    ];
    want.sort_by_key(|(p, _)| p.name());
    assert_eq!(passes, want);
}

#[test]
fn one_platform_is_one_pass_over_the_whole_graph() {
    // Every root on the [build] platform, or with that platform as its attribute.
    let o = other();
    let (_d, ws) = workspace(&format!("[build]\nplatform = \"{}\"\n", o.name()));
    assert_eq!(default_platform(&ws).unwrap(), o);
    let mut g = ActionGraph::default();
    g.root_platforms.insert(label("//a:a"), o.name().into());
    let roots = [label("//a:a"), label("//b:b")];
    assert_eq!(
        platform_passes(&ws, &[], &g, &roots).unwrap(),
        vec![(o, None)]
    );
    // No roots at all: still one pass, on the default platform.
    assert_eq!(
        platform_passes(&ws, &[], &ActionGraph::default(), &[]).unwrap(),
        vec![(o, None)]
    );
}

#[test]
fn unknown_platforms_name_where_they_come_from() {
    let mut g = ActionGraph::default();
    g.root_platforms.insert(label("//a:a"), "windows".into());
    let (_d, ws) = workspace("");
    let e = platform_passes(&ws, &[], &g, &[label("//a:a")])
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("//a:a: "), "{e}");
    // wbuild.toml's own check refuses an unknown [build] platform already; the driver
    // names the file too if one gets through.
    let (_d2, mut ws2) = workspace("");
    ws2.config.build.platform = Some("windows".into());
    let e = default_platform(&ws2).unwrap_err().to_string();
    assert!(e.starts_with("[build] platform in "), "{e}");
    assert!(e.contains("wbuild.toml"), "{e}");
}

#[test]
fn a_missing_cross_compiler_names_the_package_to_install() {
    let empty = tempfile::tempdir().unwrap();
    check_cross_toolchain_in(Platform::host(), empty.path()).unwrap();
    let o = other();
    let e = check_cross_toolchain_in(o, empty.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("building for {} needs ", o.name())),
        "{e}"
    );
    assert!(e.contains(&empty.path().display().to_string()), "{e}");
    assert!(e.contains("apt-get install "), "{e}");
}

fn pinned_workspace(dir: &Path) -> Workspace {
    let (_pubkey, _id) = wbuild_bundle::sign::keygen(&dir.join("team.key")).unwrap();
    std::fs::write(
        dir.join("wbuild.toml"),
        "[trust]\nkeys = [\"team.pub\"]\n\n[toolchains.gcc]\nsource = \"gcc.bundle\"\n",
    )
    .unwrap();
    Workspace::discover(dir).unwrap()
}

#[test]
fn an_unreadable_lock_file_is_named_and_nothing_is_installed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut ws = pinned_workspace(dir.path());
    std::fs::write(
        dir.path().join("wbuild.lock"),
        "[toolchains.gcc]\nsource = 1\n",
    )
    .unwrap();
    let e = resolve_workspace(&mut ws, cache.path(), &|_| {}).unwrap_err();
    assert!(matches!(e, DriverError::Lock { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: unreadable; delete it to resolve the toolchains again",
            ws.root.join("wbuild.lock").display()
        )
    );
    assert!(ws.externals.is_empty());
}

#[test]
fn a_pinned_toolchain_without_a_trusted_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("wbuild.toml"),
        "[toolchains.gcc]\nsource = \"gcc.bundle\"\n",
    )
    .unwrap();
    let mut ws = Workspace::discover(dir.path()).unwrap();
    let e = resolve_workspace(&mut ws, cache.path(), &|_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("no key is trusted"), "{e}");
    assert!(!dir.path().join("wbuild.lock").exists());
}

#[test]
fn a_missing_bundle_names_the_pin_and_writes_no_lock() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut ws = pinned_workspace(dir.path());
    let notes = std::sync::Mutex::new(Vec::new());
    let e = resolve_workspace(&mut ws, cache.path(), &|l| {
        notes.lock().unwrap().push(l.to_owned())
    })
    .unwrap_err();
    assert!(matches!(e, DriverError::Bundle { .. }), "{e:?}");
    assert!(e.to_string().starts_with("[toolchains.gcc] in "), "{e}");
    assert_eq!(
        notes.into_inner().unwrap(),
        vec!["fetching toolchain gcc from gcc.bundle".to_owned()]
    );
    assert!(!dir.path().join("wbuild.lock").exists());
}

#[test]
fn provenance_signature_checks_cannot_be_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, ws) = workspace("");
    // An unsigned statement when a signature check was asked for.
    let plain = dir.path().join("plain.json");
    std::fs::write(&plain, r#"{"_type": "https://in-toto.io/Statement/v1"}"#).unwrap();
    let e = provenance::read(&plain, &["RWQ".into()], &ws).unwrap_err();
    assert!(
        e.to_string()
            .contains("is an unsigned statement, but --key asks"),
        "{e}"
    );
    // An envelope with nothing to check it against.
    let env = dir.path().join("env.json");
    std::fs::write(
        &env,
        r#"{"payloadType": "application/vnd.in-toto+json", "payload": "e30=", "signatures": []}"#,
    )
    .unwrap();
    let e = provenance::read(&env, &[], &ws).unwrap_err();
    assert!(
        e.to_string().contains("is a signed envelope: pass --key"),
        "{e}"
    );
    // Not JSON at all.
    std::fs::write(&env, "not json").unwrap();
    let e = provenance::read(&env, &[], &ws).unwrap_err();
    assert!(
        matches!(e, provenance::ProvenanceError::NotJson { .. }),
        "{e:?}"
    );
}

#[test]
fn remote_credentials_never_show_in_debug_output() {
    let auth = wbuild_driver::RemoteAuth {
        headers: vec![
            "authorization=Bearer s3cr3t-token".into(),
            "x-api-key=hunter2".into(),
            "no-equals-sign-s3cr3t".into(),
        ],
        ..Default::default()
    };
    let req = wbuild_driver::RemoteRequest {
        auth,
        ..Default::default()
    };
    let shown = format!("{req:?} {req:#?}");
    for secret in ["s3cr3t", "hunter2"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(shown.contains("authorization=<redacted>"), "{shown}");
}

#[test]
fn remote_flags_override_the_workspace_and_bad_headers_are_errors() {
    let (_d, ws) = workspace(
        "[remote]\nca = \"ca.pem\"\ntoken_file = \"token\"\nheaders = { x-team = \"a\", x-keep = \"k\" }\n",
    );
    let file = Some((&ws.config.remote, ws.root.as_path()));
    let o = wbuild_driver::RemoteAuth::default().options(file).unwrap();
    assert_eq!(o.ca, Some(ws.root.join("ca.pem")));
    assert_eq!(o.token_file, Some(ws.root.join("token")));
    let flags = wbuild_driver::RemoteAuth {
        ca: Some("/etc/other.pem".into()),
        headers: vec!["x-team=b".into()],
        ..Default::default()
    };
    let o = flags.options(file).unwrap();
    assert_eq!(o.ca, Some("/etc/other.pem".into()));
    assert_eq!(o.token_file, Some(ws.root.join("token")));
    // The flag's header comes after the file's, so it is the one sent.
    let team: Vec<&str> = o
        .headers
        .iter()
        .filter(|(n, _)| n == "x-team")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(team.last(), Some(&"b"));
    let bad = wbuild_driver::RemoteAuth {
        headers: vec!["=value".into()],
        ..Default::default()
    };
    assert!(matches!(
        bad.options(None).unwrap_err(),
        DriverError::Remote(_)
    ));
}

#[test]
fn a_remote_cache_and_another_executor_are_refused_before_connecting() {
    let (_d, ws) = workspace("");
    let req = wbuild_driver::RemoteRequest {
        // Nothing listens here: the error must come before any connection attempt.
        cache: Some("grpc://127.0.0.1:1".into()),
        executor: Some("grpc://127.0.0.1:2".into()),
        ..Default::default()
    };
    let e = wbuild_driver::session::connect_remote(&ws, &req, &|_| {})
        .err()
        .expect("refused");
    assert!(e.to_string().contains("differ"), "{e}");
    let none = wbuild_driver::RemoteRequest::default();
    let (c, x) = wbuild_driver::session::connect_remote(&ws, &none, &|_| {}).unwrap();
    assert!(c.is_none() && x.is_none());
}

#[test]
fn every_native_platform_names_a_bundle_platform() {
    // A pass for a platform uses the pinned bundle whose manifest names that platform.
    for p in Platform::ALL {
        assert!(
            wbuild_bundle::manifest::PLATFORMS.contains(&p.name()),
            "{} is not a bundle platform",
            p.name()
        );
    }
}

/// What a report that walks the cause chain (the CLI's `{e:#}`) prints.
fn report(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Every error that prints its cause does not also return it as its `source()`, so the
/// cause appears once in what the user reads, whichever room the error came from.
#[test]
fn errors_print_their_cause_once_in_every_crate() {
    use std::path::PathBuf;
    let io = || std::io::Error::other("disk on fire");
    let errors: Vec<Box<dyn std::error::Error>> = vec![
        Box::new(wbuild_store::StoreError::Io {
            op: "read",
            path: PathBuf::from("/c/x"),
            error: io(),
        }),
        Box::new(wbuild_store::StoreError::NoSpace {
            op: "write",
            path: PathBuf::from("/c/x"),
            error: io(),
        }),
        Box::new(wbuild_graph::GraphError::Io {
            path: PathBuf::from("/ws/WBUILD"),
            error: io(),
        }),
        Box::new(wbuild_exec_wasi::ExecError::Sandbox {
            path: PathBuf::from("/c/slot"),
            error: io(),
        }),
        Box::new(wbuild_exec_native::SandboxError::Io {
            what: "clone",
            error: io(),
        }),
        Box::new(wbuild_remote::RemoteError::Listen {
            addr: "127.0.0.1:1".into(),
            error: io(),
        }),
        Box::new(wbuild_driver::DriverError::OpenStore {
            path: PathBuf::from("/c"),
            source: Box::new(wbuild_store::StoreError::NotWritable {
                op: "create",
                path: PathBuf::from("/c/index.redb"),
                error: io(),
            }),
        }),
    ];
    for e in errors {
        let shown = report(e.as_ref());
        assert_eq!(shown.matches("disk on fire").count(), 1, "{shown}");
    }
}
