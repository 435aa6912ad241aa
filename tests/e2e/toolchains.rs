//! Toolchain bundles: pack, sign, verify (with wbuild and with Debian's `minisign`), publish
//! to and fetch from a real OCI registry (`docker-registry`), pinned builds, and every way a
//! bundle can be wrong (flipped blob byte, edited manifest, wrong key, no signature).

use std::path::{Path, PathBuf};
use std::process::Command;

use wbuild_tests::oci::OciRegistry;
use wbuild_tests::{TestWorkspace, guest, repo_root, stderr, stdout};

use super::{BIN, s, ws};

/// A definition of the WASI tools bundle (wb-template and its data) under `dir`, staged
/// from the tools this test crate built from source.
fn wasi_tools_def(dir: &Path, version: &str) {
    let dist = dir.join("dist");
    std::fs::create_dir_all(dist.join("bin")).unwrap();
    std::fs::copy(guest("wb-template"), dist.join("bin/wb-template.wasm")).unwrap();
    let data = repo_root().join("toolchains/wasi-tools/wb-template/share/wb-template");
    std::fs::create_dir_all(dist.join("wb-template")).unwrap();
    for e in std::fs::read_dir(&data).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dist.join("wb-template").join(e.file_name())).unwrap();
    }
    std::fs::write(
        dir.join("toolchain.toml"),
        format!(
            "name = \"wasi-tools\"\nversion = \"{version}\"\nplatform = \"wasi\"\nroot = \"dist\"\n\
             [entry_points]\nwb-template = \"bin/wb-template.wasm\"\n"
        ),
    )
    .unwrap();
}

/// `wbuild ARGS` in the workspace, output as text; panics with the report on failure.
fn ok(w: &TestWorkspace, args: &[&str]) -> String {
    let out = w.ok(args);
    format!("{}{}", stdout(&out), stderr(&out))
}

fn fail(w: &TestWorkspace, args: &[&str]) -> String {
    let out = w.fail(args);
    format!("{}{}", stdout(&out), stderr(&out))
}

/// The `sha256:...` digest `toolchain pack` printed.
fn packed_digest(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("sha256:"))
        .map(|l| format!("sha256:{}", l.split_whitespace().next().unwrap()))
        .unwrap_or_else(|| panic!("no digest in {out}"))
}

fn sh(dir: &Path, script: &str) -> std::process::Output {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A copy of `bundle` with the tar entries rewritten by `edit` (run in the extracted tree).
fn rewrite_bundle(bundle: &Path, out: &Path, edit: &str) {
    let tmp = tempfile::tempdir().unwrap();
    sh(
        tmp.path(),
        &format!(
            "tar -xf {} && {edit} && tar --format=ustar --no-recursion -cf {} manifest.json \
             $(ls signatures/* 2>/dev/null) blobs/sha256/*",
            bundle.display(),
            out.display()
        ),
    );
}

struct Signed {
    dir: PathBuf,
    bundle: PathBuf,
    digest: String,
}

/// Keys, a packed and signed wasi-tools bundle, in `<workspace>/../tc`.
fn signed_bundle(w: &TestWorkspace, version: &str) -> Signed {
    let dir = w.root.join("../tc");
    std::fs::create_dir_all(&dir).unwrap();
    let def = dir.join(format!("def-{version}"));
    wasi_tools_def(&def, version);
    if !dir.join("team.key").exists() {
        ok(w, &["toolchain", "keygen", "--out", "../tc/team.key"]);
    }
    let bundle = dir.join(format!("wasi-tools-{version}.bundle"));
    let b = bundle.to_str().unwrap();
    let out = ok(w, &["toolchain", "pack", def.to_str().unwrap(), "--out", b]);
    let digest = packed_digest(&out);
    ok(w, &["toolchain", "sign", b, "--key", "../tc/team.key"]);
    Signed {
        dir,
        bundle,
        digest,
    }
}

#[test]
fn bundle_packing_is_deterministic_and_signatures_verify_with_minisign() {
    let w = ws();
    let def = w.root.join("../def");
    wasi_tools_def(&def, "0.1.0");
    let d = def.to_str().unwrap();
    let a = ok(&w, &["toolchain", "pack", d, "--out", "../a.bundle"]);
    let b = ok(&w, &["toolchain", "pack", d, "--out", "../b.bundle"]);
    assert_eq!(packed_digest(&a), packed_digest(&b));
    let bytes_a = std::fs::read(w.root.join("../a.bundle")).unwrap();
    assert_eq!(bytes_a, std::fs::read(w.root.join("../b.bundle")).unwrap());
    assert!(a.contains("3 files"), "{a}");
    let digest = packed_digest(&a);

    // Keys: minisign format; never overwritten.
    let out = ok(&w, &["toolchain", "keygen", "--out", "../team.key"]);
    assert!(out.contains("key id"), "{out}");
    let err = fail(&w, &["toolchain", "keygen", "--out", "../team.key"]);
    assert!(
        err.contains("team.key") && err.contains("already exists"),
        "{err}"
    );
    ok(&w, &["toolchain", "keygen", "--out", "../other.key"]);

    // Signing does not change the digest; wbuild and minisign both verify it.
    let out = ok(
        &w,
        &["toolchain", "sign", "../a.bundle", "--key", "../team.key"],
    );
    assert!(out.contains(&digest), "{out}");
    let out = ok(
        &w,
        &["toolchain", "verify", "../a.bundle", "--key", "../team.pub"],
    );
    assert!(out.starts_with("ok:") && out.contains(&digest), "{out}");
    let x = tempfile::tempdir().unwrap();
    let mini = sh(
        x.path(),
        &format!(
            "tar -xf {} manifest.json signatures && minisign -Vm manifest.json -x signatures/*.minisig -p {}",
            w.root.join("../a.bundle").display(),
            w.root.join("../team.pub").display()
        ),
    );
    let mini = String::from_utf8_lossy(&mini.stdout).into_owned();
    assert!(
        mini.contains("Signature and comment signature verified") && mini.contains(&digest),
        "{mini}"
    );
    // minisign refuses the signature under another key.
    let other = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "minisign -Vm manifest.json -x signatures/*.minisig -p {}",
            w.root.join("../other.pub").display()
        ))
        .current_dir(x.path())
        .output()
        .unwrap();
    assert!(!other.status.success());

    // No signature, a wrong key, an edited manifest, a flipped blob byte: all refused, and
    // nothing is installed.
    let err = fail(
        &w,
        &["toolchain", "verify", "../b.bundle", "--key", "../team.pub"],
    );
    assert!(
        err.contains("unsigned") && err.contains("b.bundle"),
        "{err}"
    );
    let err = fail(
        &w,
        &["toolchain", "fetch", "../a.bundle", "--key", "../other.pub"],
    );
    assert!(
        err.contains("none of them is trusted") && err.contains("a.bundle"),
        "{err}"
    );
    let edited = w.root.join("../edited.bundle");
    rewrite_bundle(
        &w.root.join("../a.bundle"),
        &edited,
        "sed -i 's/\"0.1.0\"/\"0.1.1\"/' manifest.json",
    );
    let err = fail(
        &w,
        &[
            "toolchain",
            "fetch",
            "../edited.bundle",
            "--key",
            "../team.pub",
        ],
    );
    assert!(
        err.contains("does not verify") && err.contains("edited.bundle"),
        "{err}"
    );
    let wasm_hex = sha256_hex(&std::fs::read(def.join("dist/bin/wb-template.wasm")).unwrap());
    let flipped = w.root.join("../flipped.bundle");
    rewrite_bundle(
        &w.root.join("../a.bundle"),
        &flipped,
        &format!(
            "printf 'X' | dd of=blobs/sha256/{wasm_hex} bs=1 seek=100 conv=notrunc 2>/dev/null"
        ),
    );
    let err = fail(
        &w,
        &[
            "toolchain",
            "fetch",
            "../flipped.bundle",
            "--key",
            "../team.pub",
        ],
    );
    assert!(
        err.contains("bin/wb-template.wasm") && err.contains("tampered"),
        "{err}"
    );
    let out = ok(&w, &["toolchain", "list"]);
    assert!(out.trim().is_empty(), "nothing may be installed: {out}");

    // The good bundle installs, lists and verifies; a tampered installed file is found.
    let out = ok(
        &w,
        &["toolchain", "fetch", "../a.bundle", "--key", "../team.pub"],
    );
    assert!(out.contains(&digest), "{out}");
    let out = ok(&w, &["toolchain", "list"]);
    assert!(out.contains("wasi-tools") && out.contains(&digest), "{out}");
    let installed = w
        .cache
        .join("toolchains")
        .join(digest.strip_prefix("sha256:").unwrap())
        .join("root/wb-template/c-header.txt");
    let mut perm = std::fs::metadata(&installed).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
    std::fs::set_permissions(&installed, perm).unwrap();
    std::fs::write(&installed, "tampered\n").unwrap();
    let err = fail(
        &w,
        &["toolchain", "verify", "wasi-tools", "--key", "../team.pub"],
    );
    assert!(
        err.contains("c-header.txt") && err.contains("manifest says"),
        "{err}"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// A workspace that runs wb-template from the pinned bundle.
fn pinned_workspace(w: &TestWorkspace, source: &str, digest: Option<&str>, key: &str) {
    let mut toml =
        format!("[trust]\nkeys = [\"{key}\"]\n\n[toolchains.wasi-tools]\nsource = \"{source}\"\n");
    if let Some(d) = digest {
        toml.push_str(&format!("digest = \"{d}\"\n"));
    }
    w.write("wbuild.toml", &toml);
    w.write(
        "tools/WBUILD",
        r#"
wasi_tool(
    name = "template",
    src = "@wasi-tools//:wb-template",
    data = ["@wasi-tools//wb-template"],
)
"#,
    );
    w.write("gen/config.h.tmpl", "#define NAME \"{{name}}\"\n");
    w.write("gen/project.vars", "name = demo\n");
    w.write(
        "gen/WBUILD",
        r#"
wasi_run(
    name = "header",
    tool = "//tools:template",
    srcs = ["config.h.tmpl", "project.vars"],
    outs = ["config.h"],
    args = ["--vars", "$(location project.vars)", "--prelude", "c-header.txt",
            "$(location config.h.tmpl)", "-o", "$@"],
)
"#,
    );
}

#[test]
fn bundles_round_trip_through_an_oci_registry_and_pinned_builds_fetch_them() {
    let registry = OciRegistry::start();
    let w = ws();
    let signed = signed_bundle(&w, "0.1.0");
    let b = signed.bundle.to_str().unwrap();
    let tag = format!("oci://{}/toolchains/wasi-tools:0.1.0", registry.address());

    // Unsigned bundles are not published.
    let def = signed.dir.join("def-0.1.0");
    ok(
        &w,
        &[
            "toolchain",
            "pack",
            def.to_str().unwrap(),
            "--out",
            "../tc/unsigned.bundle",
        ],
    );
    let err = fail(&w, &["toolchain", "publish", "../tc/unsigned.bundle", &tag]);
    assert!(err.contains("unsigned"), "{err}");

    let out = ok(&w, &["toolchain", "publish", b, &tag]);
    let pinned = out
        .lines()
        .find(|l| l.starts_with("oci://") && l.contains("@sha256:"))
        .unwrap_or_else(|| panic!("no pinned reference in {out}"))
        .to_owned();
    assert!(out.contains(&signed.digest), "{out}");
    // Publishing again uploads nothing.
    let again = ok(&w, &["toolchain", "publish", b, &tag]);
    assert!(again.contains(" 0 of "), "{again}");

    // Fetch by digest into an empty cache: verified and installed.
    let out = ok(
        &w,
        &["toolchain", "fetch", &pinned, "--key", "../tc/team.pub"],
    );
    assert!(out.contains(&signed.digest), "{out}");
    let out = ok(&w, &["toolchain", "list"]);
    assert!(
        out.contains(&signed.digest) && out.contains("signed by"),
        "{out}"
    );

    // A build pinned by source + digest, from another empty cache, fetches on demand.
    std::fs::copy(signed.dir.join("team.pub"), w.path("team.pub")).unwrap();
    pinned_workspace(&w, &tag, Some(&signed.digest), "team.pub");
    std::fs::remove_dir_all(&w.cache).unwrap();
    let (out, events) = w.events(&["build", "//gen:header"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert!(
        stderr(&out).contains("fetching toolchain wasi-tools"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        wbuild_tests::statuses(&events),
        vec![s("//gen:header", "executed")]
    );
    let header = w.read("wbuild-out/gen/config.h");
    assert!(header.contains("#define NAME \"demo\""), "{header}");
    assert!(header.contains("Generated by wb-template"), "{header}");
    let lock = w.read("wbuild.lock");
    assert!(
        lock.contains(&signed.digest) && lock.contains(&tag),
        "{lock}"
    );

    // Pinned by tag only: wbuild.lock supplies the digest from now on.
    pinned_workspace(&w, &tag, None, "team.pub");
    let (out, events) = w.events(&["build", "//gen:header"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert!(!stderr(&out).contains("fetching"), "{}", stderr(&out));
    assert_eq!(
        wbuild_tests::statuses(&events),
        vec![s("//gen:header", "cached")]
    );

    // A new bundle version (same files, new digest) is a new toolchain identity: the
    // action runs again.
    let signed2 = signed_bundle(&w, "0.1.1");
    assert_ne!(signed2.digest, signed.digest);
    let tag2 = format!("oci://{}/toolchains/wasi-tools:0.1.1", registry.address());
    ok(
        &w,
        &[
            "toolchain",
            "publish",
            signed2.bundle.to_str().unwrap(),
            &tag2,
        ],
    );
    pinned_workspace(&w, &tag2, Some(&signed2.digest), "team.pub");
    let (out, events) = w.events(&["build", "//gen:header"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(
        wbuild_tests::statuses(&events),
        vec![s("//gen:header", "executed")]
    );

    // A wrong pinned digest, and a workspace trusting another key, are refused.
    let wrong = format!("sha256:{}", "0".repeat(64));
    pinned_workspace(&w, &tag, Some(&wrong), "team.pub");
    let err = fail(&w, &["build", "//gen:header"]);
    assert!(
        err.contains(&wrong) && err.contains("wbuild.toml") && err.contains(&signed.digest),
        "{err}"
    );
    ok(&w, &["toolchain", "keygen", "--out", "other.key"]);
    pinned_workspace(&w, &tag, Some(&signed.digest), "other.pub");
    let err = fail(&w, &["build", "//gen:header"]);
    assert!(err.contains("none of them is trusted"), "{err}");

    // A registry serving a corrupted blob: the fetch fails naming the digest, nothing is
    // installed.
    let wasm_hex = sha256_hex(&std::fs::read(guest("wb-template")).unwrap());
    let blob = registry.blob_data_path(&format!("sha256:{wasm_hex}"));
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let fresh = w.root.join("../fresh-cache");
    let out = Command::new(BIN)
        .current_dir(&w.root)
        .arg("--cache-dir")
        .arg(&fresh)
        .args(["toolchain", "fetch", &pinned, "--key", "team.pub"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&wasm_hex), "{err}");
    let installed: Vec<_> = std::fs::read_dir(fresh.join("toolchains"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    assert!(installed.is_empty(), "{installed:?}");
}

/// Signed bundles shared by the tests of this binary (packing the captured gcc trees takes
/// a while): `example.key`/`example.pub`, `wasi-tools.bundle` (the tools built by this test
/// crate), `gcc-x86_64-linux.bundle` and `gcc-aarch64-linux.bundle` (captured from this
/// machine by the definitions in `toolchains/`), in `$CARGO_TARGET_TMPDIR/e2e-bundles`.
pub(crate) struct SharedBundles {
    pub dir: PathBuf,
    pub wasi: String,
    pub x86: String,
    pub arm: String,
}

pub(crate) fn shared_bundles() -> &'static SharedBundles {
    static SHARED: std::sync::OnceLock<SharedBundles> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-bundles");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cache = dir.join("cache");
        let wbuild = |args: &[&str]| -> String {
            let out = Command::new(BIN)
                .current_dir(&dir)
                .arg("--cache-dir")
                .arg(&cache)
                .args(args)
                .output()
                .unwrap();
            let text = format!("{}{}", stdout(&out), stderr(&out));
            assert!(out.status.success(), "wbuild {args:?}: {text}");
            text
        };
        wbuild(&["toolchain", "keygen", "--out", "example.key"]);
        let pack = |def: &Path, name: &str| -> String {
            let bundle = format!("{name}.bundle");
            let out = wbuild(&["toolchain", "pack", def.to_str().unwrap(), "--out", &bundle]);
            eprintln!("{out}");
            wbuild(&["toolchain", "sign", &bundle, "--key", "example.key"]);
            packed_digest(&out)
        };
        let wasi_def = dir.join("wasi-tools-def");
        wasi_tools_def(&wasi_def, "0.1.0");
        let wasi = pack(&wasi_def, "wasi-tools");
        let x86 = pack(
            &repo_root().join("toolchains/gcc-x86_64-linux"),
            "gcc-x86_64-linux",
        );
        let arm = pack(
            &repo_root().join("toolchains/gcc-aarch64-linux"),
            "gcc-aarch64-linux",
        );
        SharedBundles {
            dir,
            wasi,
            x86,
            arm,
        }
    })
}

#[test]
fn native_actions_with_a_pinned_gcc_bundle_see_nothing_of_the_host() {
    let w = ws();
    super::c_project(&w);
    let shared = shared_bundles();
    // A header the host has but the bundle does not (from a -dev package outside the
    // bundle's package closure): found by the host toolchain, not through the bundle.
    let name = ["zlib.h", "bzlib.h", "expat.h", "jpeglib.h", "gcrypt.h"]
        .into_iter()
        .find(|h| Path::new("/usr/include").join(h).is_file())
        .expect("none of zlib.h, bzlib.h, expat.h, jpeglib.h, gcrypt.h in /usr/include");
    w.write("host/uses.c", &format!("#include <{name}>\nint v = 1;\n"));
    w.write(
        "host/WBUILD",
        "cc_library(name = \"uses\", srcs = [\"uses.c\"])\n",
    );
    ok(&w, &["build", "//host:uses"]);

    w.write(
        "wbuild.toml",
        &format!(
            "[trust]\nkeys = [\"{d}/example.pub\"]\n\n\
             [toolchains.gcc-x86_64-linux]\nsource = \"{d}/gcc-x86_64-linux.bundle\"\ndigest = \"{}\"\n\n\
             [toolchains.gcc-aarch64-linux]\nsource = \"{d}/gcc-aarch64-linux.bundle\"\ndigest = \"{}\"\n",
            shared.x86,
            shared.arm,
            d = shared.dir.display()
        ),
    );
    let err = fail(&w, &["build", "//host:uses"]);
    assert!(err.contains(name) && err.contains("No such file"), "{err}");

    // The C project builds, links, runs and tests with the bundles, for both platforms.
    let (out, events) = w.events(&[
        "test",
        "--platform",
        "linux-x86_64,linux-arm64",
        "//app:hello",
        "//app:add_test",
    ]);
    assert!(out.status.success(), "{}", w.report(&["test"], &out));
    assert!(
        wbuild_tests::statuses(&events)
            .iter()
            .all(|(_, st)| st == "executed"),
        "{events:?}"
    );
    let run = Command::new(w.path("wbuild-out/app/hello"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "hello from wbuild 5\n"
    );
    let elf = std::fs::read(w.path("wbuild-out/linux-arm64/app/hello")).unwrap();
    assert_eq!(
        u16::from_le_bytes([elf[18], elf[19]]),
        0xb7,
        "aarch64 e_machine"
    );

    // The keys are the bundle's: the same action with the host toolchain has another key,
    // while the same bundle in another cache gives the same key and the same bytes.
    let digest_of = |events: &[serde_json::Value]| -> String {
        events
            .iter()
            .find(|e| e["label"] == "//app:hello" && e["mnemonic"] == "CcLink")
            .and_then(|e| e["action_digest"].as_str())
            .unwrap_or_else(|| panic!("no CcLink of //app:hello in {events:?}"))
            .to_owned()
    };
    let (out, events) = w.events(&["build", "//app:hello"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    let bundle_key = digest_of(&events);
    let hello = std::fs::read(w.path("wbuild-out/app/hello")).unwrap();
    std::fs::remove_dir_all(&w.cache).unwrap();
    std::fs::remove_dir_all(w.path("wbuild-out")).unwrap();
    let (out, events) = w.events(&["build", "//app:hello"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_eq!(digest_of(&events), bundle_key);
    assert_eq!(
        std::fs::read(w.path("wbuild-out/app/hello")).unwrap(),
        hello
    );
    w.write("wbuild.toml", "");
    let (out, events) = w.events(&["build", "//app:hello"]);
    assert!(out.status.success(), "{}", w.report(&["build"], &out));
    assert_ne!(digest_of(&events), bundle_key);
}
