//! Unit tests of the CAS, locking, reopening, gc, verify and crash safety.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use crate::test_util::{result_with, store_in};
use crate::{Digest, DigestFunction, Store, StoreError};

/// Overwrite a blob file in place (it is read-only) to simulate disk corruption.
pub(crate) fn corrupt_file(path: &Path, bytes: &[u8]) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(path, bytes).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o444)).unwrap();
}

fn action(n: u32) -> Digest {
    Digest::of(DigestFunction::Blake3, format!("action {n}").as_bytes())
}

#[test]
fn store_and_error_are_shareable() {
    fn check<T: Send + Sync + 'static>() {}
    check::<Store>();
    check::<StoreError>();
    fn is_error<E: std::error::Error + Send + Sync + 'static>() {}
    is_error::<StoreError>();
}

#[test]
fn put_file_move_of_a_symlink_is_refused_and_the_target_untouched() {
    let (dir, store) = store_in();
    let target = dir.path().join("target");
    fs::write(&target, b"pointed at").unwrap();
    let link = store.tmp_dir().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = store.put_file_move(&link).unwrap_err();
    assert!(matches!(e, StoreError::NotAFile { .. }), "{e}");
    assert!(fs::symlink_metadata(&link).is_ok(), "link left alone");
    assert_eq!(fs::read(&target).unwrap(), b"pointed at");
    assert_eq!(
        fs::metadata(&target).unwrap().mode() & 0o222,
        0o200,
        "target still writable"
    );
}

#[test]
fn drop_removes_read_only_staging_trees() {
    let (_dir, store) = store_in();
    let stage = store.tmp_dir().join("stage/sub");
    fs::create_dir_all(&stage).unwrap();
    fs::write(stage.join("f"), b"x").unwrap();
    fs::set_permissions(&stage, fs::Permissions::from_mode(0o555)).unwrap();
    let tmp = store.tmp_dir();
    drop(store);
    assert!(!tmp.exists());
}

#[test]
fn layout_on_open() {
    let (dir, store) = store_in();
    let root = dir.path().join("cache");
    for sub in ["cas", "tmp", "modules", "index.redb"] {
        assert!(root.join(sub).exists(), "{sub}");
    }
    assert_eq!(store.dir(), root);
    assert_eq!(store.modules_dir(), root.join("modules"));
    assert!(store.tmp_dir().starts_with(root.join("tmp")));
    assert!(store.tmp_dir().is_dir());
    assert_eq!(store.function(), DigestFunction::Blake3);
}

#[test]
fn put_get_has() {
    let (_dir, store) = store_in();
    let d = store.put_bytes(b"hello").unwrap();
    assert_eq!(d, Digest::of(DigestFunction::Blake3, b"hello"));
    assert!(store.has(&d));
    assert_eq!(store.get_bytes(&d).unwrap(), b"hello");
    // Idempotent.
    assert_eq!(store.put_bytes(b"hello").unwrap(), d);

    let path = store.blob_path(&d);
    let hex = d.hex();
    assert!(path.ends_with(format!("cas/{}/{}", &hex[..2], hex)));
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o444);

    let absent = Digest::of(DigestFunction::Blake3, b"absent");
    assert!(!store.has(&absent));
    assert!(store.get_bytes(&absent).unwrap_err().is_not_found());

    let empty = Digest::empty(DigestFunction::Blake3);
    assert!(store.has(&empty));
    assert_eq!(store.get_bytes(&empty).unwrap(), b"");
    assert_eq!(store.put_bytes(b"").unwrap(), empty);
}

#[test]
fn put_file_and_put_file_move() {
    let (dir, store) = store_in();
    let src = dir.path().join("src.bin");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&src, &data).unwrap();
    let d = store.put_file(&src).unwrap();
    assert_eq!(d, Digest::of(DigestFunction::Blake3, &data));
    assert!(src.exists(), "put_file copies");
    assert_eq!(store.get_bytes(&d).unwrap(), data);
    assert_ne!(
        fs::metadata(&src).unwrap().ino(),
        fs::metadata(store.blob_path(&d)).unwrap().ino()
    );

    let out = store.tmp_dir().join("out.txt");
    fs::write(&out, b"moved output").unwrap();
    let ino = fs::metadata(&out).unwrap().ino();
    let d2 = store.put_file_move(&out).unwrap();
    assert!(!out.exists(), "put_file_move renames");
    let blob = store.blob_path(&d2);
    assert_eq!(fs::metadata(&blob).unwrap().ino(), ino);
    assert_eq!(fs::metadata(&blob).unwrap().mode() & 0o777, 0o444);
    assert_eq!(store.get_bytes(&d2).unwrap(), b"moved output");

    // A file with another hard link is copied, not renamed (the other name stays writable).
    let a = store.tmp_dir().join("a");
    let b = store.tmp_dir().join("b");
    fs::write(&a, b"linked").unwrap();
    fs::hard_link(&a, &b).unwrap();
    let d3 = store.put_file_move(&a).unwrap();
    assert!(!a.exists());
    assert_eq!(fs::metadata(&b).unwrap().mode() & 0o222, 0o200);
    assert_ne!(
        fs::metadata(&b).unwrap().ino(),
        fs::metadata(store.blob_path(&d3)).unwrap().ino()
    );

    assert!(matches!(
        store.put_file(dir.path()),
        Err(StoreError::NotAFile { .. })
    ));
}

#[test]
fn corrupt_blob_is_detected_and_evicted() {
    let (_dir, store) = store_in();
    let d = store.put_bytes(b"precious").unwrap();
    let path = store.blob_path(&d);
    corrupt_file(&path, b"garbage!");
    let err = store.get_bytes(&d).unwrap_err();
    match &err {
        StoreError::Corrupt { digest, path: p } => {
            assert_eq!(*digest, d);
            assert_eq!(p, &path);
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&d.hex()) && msg.contains(&path.display().to_string()),
        "{msg}"
    );
    assert!(!path.exists(), "corrupt blob evicted");
    assert!(!store.has(&d));
    assert!(store.get_bytes(&d).unwrap_err().is_not_found());
    // It can be stored again.
    store.put_bytes(b"precious").unwrap();
    assert_eq!(store.get_bytes(&d).unwrap(), b"precious");
}

#[test]
fn truncated_blob_is_corrupt_for_materialize_and_link() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let d = {
        let store = Store::open(&cache).unwrap();
        store.put_bytes(b"will be truncated").unwrap()
    };
    // A new process has not verified the blob yet.
    let store = Store::open(&cache).unwrap();
    corrupt_file(&store.blob_path(&d), b"");
    let dest = dir.path().join("ws/wbuild-out/x");
    assert!(
        store
            .materialize(&d, &dest, false)
            .unwrap_err()
            .is_corrupt()
    );
    assert!(!dest.exists());
    assert!(
        fs::read_dir(dest.parent().unwrap())
            .unwrap()
            .next()
            .is_none(),
        "temp file left"
    );
    store.put_bytes(b"will be truncated").unwrap();
    drop(store);
    let store = Store::open(&cache).unwrap();
    corrupt_file(&store.blob_path(&d), b"will be truncatex");
    let staged = dir.path().join("stage/in/x");
    assert!(store.link_into(&d, &staged).unwrap_err().is_corrupt());
    assert!(!staged.exists());
    assert!(!store.blob_path(&d).exists());
}

#[test]
fn link_into_and_materialize() {
    let (dir, store) = store_in();
    let d = store.put_bytes(b"#!/bin/sh\necho hi\n").unwrap();

    let staged = store.tmp_dir().join("sandbox/gen/tool.sh");
    store.link_into(&d, &staged).unwrap();
    assert_eq!(fs::read(&staged).unwrap(), b"#!/bin/sh\necho hi\n");
    let blob_ino = fs::metadata(store.blob_path(&d)).unwrap().ino();
    assert_eq!(fs::metadata(&staged).unwrap().ino(), blob_ino);
    assert_eq!(fs::metadata(&staged).unwrap().mode() & 0o222, 0);
    // Linking again replaces.
    store.link_into(&d, &staged).unwrap();

    let out = dir.path().join("ws/wbuild-out/gen/tool.sh");
    store.materialize(&d, &out, true).unwrap();
    let m = fs::metadata(&out).unwrap();
    assert_ne!(
        m.ino(),
        blob_ino,
        "materialize must not share the blob inode"
    );
    assert_eq!(m.mode() & 0o777, 0o555);
    assert_eq!(fs::read(&out).unwrap(), b"#!/bin/sh\necho hi\n");
    // Replace with other content, not executable.
    let d2 = store.put_bytes(b"data").unwrap();
    store.materialize(&d2, &out, false).unwrap();
    assert_eq!(fs::read(&out).unwrap(), b"data");
    assert_eq!(fs::metadata(&out).unwrap().mode() & 0o777, 0o444);

    // The empty blob works even if never stored.
    let empty = Digest::empty(DigestFunction::Blake3);
    store.link_into(&empty, &store.tmp_dir().join("e")).unwrap();
    store
        .materialize(&empty, &dir.path().join("e"), false)
        .unwrap();
    assert_eq!(fs::read(dir.path().join("e")).unwrap(), b"");

    let absent = Digest::of(DigestFunction::Blake3, b"nope");
    assert!(
        store
            .link_into(&absent, &store.tmp_dir().join("n"))
            .unwrap_err()
            .is_not_found()
    );
    assert!(
        store
            .materialize(&absent, &dir.path().join("n"), false)
            .unwrap_err()
            .is_not_found()
    );
}

#[test]
fn reopen_after_drop() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (d, tmp) = {
        let store = Store::open(&cache).unwrap();
        let d = store.put_bytes(b"persist me").unwrap();
        store
            .ac_put(&action(1), &result_with(&[("o", d)]), "//:o")
            .unwrap();
        store.put_access_log(&action(1), "{}").unwrap();
        (d, store.tmp_dir())
    };
    assert!(!tmp.exists(), "drop removes the process tmp dir");
    let store = Store::open(&cache).unwrap();
    assert_eq!(store.get_bytes(&d).unwrap(), b"persist me");
    assert!(store.ac_get(&action(1)).unwrap().is_some());
    assert_eq!(store.access_log(&action(1)).unwrap().as_deref(), Some("{}"));
    let stats = store.stats().unwrap();
    assert_eq!((stats.blobs, stats.blob_bytes), (1, 10));
    assert_eq!((stats.ac_entries, stats.access_logs), (1, 1));
}

#[test]
fn second_open_waits_for_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let store = Store::open(&cache).unwrap();
    let err = Store::open_with_timeout(&cache, DigestFunction::Blake3, Duration::from_millis(300))
        .err()
        .expect("second open must not succeed while the first holds the store");
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!(
            "another wbuild is using cache {}",
            cache.display()
        )),
        "{err}"
    );

    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(store);
    });
    let store =
        Store::open_with_timeout(&cache, DigestFunction::Blake3, Duration::from_secs(20)).unwrap();
    holder.join().unwrap();
    drop(store);
}

#[test]
fn sha256_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(&dir.path().join("c"), DigestFunction::Sha256).unwrap();
    let d = store.put_bytes(b"abc").unwrap();
    assert_eq!(d.function, DigestFunction::Sha256);
    assert_eq!(
        d.hex(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert!(
        store
            .blob_path(&d)
            .to_string_lossy()
            .contains("/cas-sha256/ba/")
    );
    assert_eq!(store.get_bytes(&d).unwrap(), b"abc");
    // Both functions side by side.
    let b3 = store.put_bytes_as(DigestFunction::Blake3, b"abc").unwrap();
    assert_eq!(store.get_bytes(&b3).unwrap(), b"abc");
    assert_eq!(store.stats().unwrap().blobs, 2);
    assert!(store.verify().unwrap().is_clean());
}

#[test]
fn verify_repairs() {
    let (_dir, store) = store_in();
    let good = store.put_bytes(b"good").unwrap();
    let bad = store.put_bytes(b"bad").unwrap();
    store
        .ac_put(&action(1), &result_with(&[("g", good)]), "//:g")
        .unwrap();
    store
        .ac_put(&action(2), &result_with(&[("b", bad)]), "//:b")
        .unwrap();
    corrupt_file(&store.blob_path(&bad), b"BAD");
    // Stray files and a stale temp dir of a dead process.
    let stray = store.dir().join("cas/zz");
    fs::write(&stray, b"?").unwrap();
    let stale = store.dir().join("tmp/p1-1/stage/x");
    fs::create_dir_all(&stale).unwrap();
    fs::write(stale.join("f"), b"left over").unwrap();
    fs::set_permissions(&stale, fs::Permissions::from_mode(0o555)).unwrap();

    let report = store.verify().unwrap();
    assert_eq!(report.blobs_checked, 2);
    assert_eq!(report.corrupt.len(), 1);
    assert_eq!(report.corrupt[0].digest, format!("{}/3", bad.hex()));
    assert_eq!(report.stray_files_removed, vec![stray.clone()]);
    assert_eq!(report.ac_entries_dropped, 1);
    assert_eq!(report.tmp_entries_removed, 1);
    assert!(!stray.exists());
    assert!(!store.dir().join("tmp/p1-1").exists());
    assert!(store.tmp_dir().exists(), "own tmp dir kept");
    assert!(store.ac_get(&action(1)).unwrap().is_some());
    assert!(store.ac_get(&action(2)).unwrap().is_none());
    assert!(store.ac_find_by_label("//:b").unwrap().is_empty());

    let again = store.verify().unwrap();
    assert!(again.is_clean(), "{again:?}");
    assert_eq!(again.blobs_checked, 1);
}

#[test]
fn verify_reindexes_blobs_without_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let store = Store::open(&cache).unwrap();
    // Simulate a blob that reached the disk while its metadata was lost in a crash.
    let d = Digest::of(DigestFunction::Blake3, b"orphan");
    let hex = d.hex();
    let shard = cache.join("cas").join(&hex[..2]);
    fs::create_dir_all(&shard).unwrap();
    fs::write(shard.join(&hex), b"orphan").unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.metadata_added, 1);
    assert_eq!(
        fs::metadata(shard.join(&hex)).unwrap().mode() & 0o777,
        0o444,
        "verify makes blobs read-only"
    );
    assert!(store.verify().unwrap().is_clean());
}

#[test]
fn gc_is_lru_and_keeps_referenced_blobs_consistent() {
    let (_dir, store) = store_in();
    let pause = || std::thread::sleep(Duration::from_millis(5));
    let blob = |c: u8| vec![c; 100];
    let a = store.put_bytes(&blob(b'a')).unwrap();
    pause();
    let b = store.put_bytes(&blob(b'b')).unwrap();
    pause();
    let c = store.put_bytes(&blob(b'c')).unwrap();
    pause();
    let d = store.put_bytes(&blob(b'd')).unwrap();
    pause();
    // a is used again: now b is the least recently used.
    store.get_bytes(&a).unwrap();
    pause();
    store
        .ac_put(&action(1), &result_with(&[("c", c), ("d", d)]), "//:cd")
        .unwrap();
    pause();

    // Nothing to do under the cap.
    let r = store.gc(1000).unwrap();
    assert_eq!((r.blobs_deleted, r.blobs_before), (0, 4));

    let r = store.gc(300).unwrap();
    assert_eq!(r.blobs_deleted, 1);
    assert_eq!(r.bytes_after, 300);
    assert!(!store.has(&b), "LRU blob deleted");
    assert!(store.has(&a) && store.has(&c) && store.has(&d));
    assert!(store.ac_get(&action(1)).unwrap().is_some());

    // Touch the action's blobs: a becomes LRU.
    pause();
    store.ac_get(&action(1)).unwrap();
    let r = store.gc(200).unwrap();
    assert_eq!(r.blobs_deleted, 1);
    assert!(!store.has(&a));
    assert!(store.ac_get(&action(1)).unwrap().is_some());

    // Below what the action needs: the action's blobs go, and the entry with them.
    let r = store.gc(100).unwrap();
    assert_eq!(r.blobs_deleted, 1);
    assert_eq!(r.ac_entries_dropped, 1);
    assert!(store.ac_find_by_label("//:cd").unwrap().is_empty());
    assert!(store.ac_get(&action(1)).unwrap().is_none());
    assert_eq!(store.stats().unwrap().blob_bytes, 100);

    let r = store.gc(0).unwrap();
    assert_eq!(r.bytes_after, 0);
    assert_eq!(store.stats().unwrap().blobs, 0);
}

#[test]
fn gc_order_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (old, new) = {
        let store = Store::open(&cache).unwrap();
        let new = store.put_bytes(&[1u8; 50]).unwrap();
        let old = store.put_bytes(&[2u8; 50]).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        store.get_bytes(&new).unwrap();
        (old, new)
    };
    let store = Store::open(&cache).unwrap();
    store.gc(50).unwrap();
    assert!(store.has(&new));
    assert!(!store.has(&old));
}

#[test]
fn concurrent_use_from_threads() {
    let (_dir, store) = store_in();
    let store = std::sync::Arc::new(store);
    let mut handles = Vec::new();
    for t in 0..4u32 {
        let store = store.clone();
        handles.push(std::thread::spawn(move || {
            for i in 0..50u32 {
                let bytes = format!("blob {} {}", i % 10, t % 2);
                let d = store.put_bytes(bytes.as_bytes()).unwrap();
                assert_eq!(store.get_bytes(&d).unwrap(), bytes.as_bytes());
                let a = action(i + 1000 * t);
                store
                    .ac_put(&a, &result_with(&[("x", d)]), &format!("//t:{t}"))
                    .unwrap();
                assert!(store.ac_get(&a).unwrap().is_some());
                if i % 10 == 0 {
                    store.flush().unwrap();
                }
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(store.stats().unwrap().ac_entries, 200);
    assert!(store.verify().unwrap().is_clean());
}

/// Rough per-call cost of the hot paths (run with `--ignored --nocapture` in release mode
/// to see numbers; the assertions are loose so debug builds on a busy machine pass).
#[test]
fn hot_paths_are_fast() {
    let (dir, store) = store_in();
    let n = 2000;
    let mut files = Vec::new();
    for i in 0..n {
        let p = dir.path().join(format!("f{i}"));
        fs::write(&p, format!("file {i}")).unwrap();
        crate::test_util::set_old_mtime(&p);
        files.push(p);
    }
    for (i, p) in files.iter().enumerate() {
        let d = store.put_file(p).unwrap();
        store
            .ac_put(&action(i as u32), &result_with(&[("o", d)]), "//:x")
            .unwrap();
    }
    store.flush().unwrap();
    let t = std::time::Instant::now();
    for p in &files {
        store.file_digest(p).unwrap();
    }
    let per_digest = t.elapsed() / n as u32;
    assert_eq!(store.hashed_count(), 0);
    let t = std::time::Instant::now();
    for i in 0..n {
        assert!(store.ac_get(&action(i as u32)).unwrap().is_some());
    }
    let per_get = t.elapsed() / n as u32;
    eprintln!("file_digest {per_digest:?}/call, ac_get {per_get:?}/call");
    assert!(per_digest < Duration::from_micros(200), "{per_digest:?}");
    assert!(per_get < Duration::from_micros(500), "{per_get:?}");
}

// ---------------------------------------------------------------------------------------------
// Crash safety: a child process (this test binary, re-run with an env var) hammers the store
// and is killed with SIGKILL at a random moment; the parent then opens the store and checks it.

const CRASH_ENV: &str = "WBUILD_STORE_CRASH_CHILD_DIR";

/// The child process of `crash_safety` (which runs it with `--ignored` and kills it at a
/// random moment): writes to the store without end.
#[test]
#[ignore = "the child process of crash_safety, which runs it"]
fn crash_child() {
    let dir = std::env::var_os(CRASH_ENV)
        .unwrap_or_else(|| panic!("run by crash_safety, which sets {CRASH_ENV}"));
    let seed: u64 = std::env::var("WBUILD_STORE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let store = Store::open(Path::new(&dir)).unwrap();
    let mut rng = crate::model_tests::Rng(seed | 1);
    let build = store.begin_build("build", &["//...".into()]).unwrap();
    let src = store.tmp_dir().join("src");
    for i in 0u64.. {
        let n = rng.below(64);
        let content = format!("content {n} {}", "x".repeat(rng.below(5000) as usize));
        let out = if rng.below(2) == 0 {
            store.put_bytes(content.as_bytes()).unwrap()
        } else {
            fs::write(&src, &content).unwrap();
            store.put_file_move(&src).unwrap()
        };
        let act = action(rng.below(200) as u32);
        store
            .ac_put(&act, &result_with(&[("out", out)]), "//crash:x")
            .unwrap();
        store.put_access_log(&act, "{\"reads\":[]}").unwrap();
        store
            .record_action(
                build,
                &crate::ActionRecord {
                    label: format!("//crash:{n}"),
                    mnemonic: "WasiRun".into(),
                    action_digest: act.to_string(),
                    status: "executed".into(),
                    duration_ms: i,
                    ..Default::default()
                },
            )
            .unwrap();
        if rng.below(16) == 0 {
            store.flush().unwrap();
        }
        if rng.below(64) == 0 {
            store.gc(200_000).unwrap();
        }
    }
}

#[test]
fn crash_safety() {
    if std::env::var_os(CRASH_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let exe = std::env::current_exe().unwrap();
    let mut rng = crate::model_tests::Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..6 {
        let mut child = std::process::Command::new(&exe)
            .args([
                "store_tests::crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(CRASH_ENV, &cache)
            .env("WBUILD_STORE_CRASH_SEED", (round + 1).to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(150 + rng.below(400)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        // Killed while writing: a child that ended by itself (found no test to run, or
        // failed) would make this round test nothing.
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "the child ended on its own: {status:?}"
        );

        let store =
            Store::open_with_timeout(&cache, DigestFunction::Blake3, Duration::from_secs(30))
                .unwrap();
        // Every AC hit has readable, correct outputs.
        let mut hits = 0;
        for n in 0..200 {
            if let Some(r) = store.ac_get(&action(n)).unwrap() {
                hits += 1;
                for f in &r.output_files {
                    let d = Digest::from_proto(DigestFunction::Blake3, f.digest.as_ref().unwrap())
                        .unwrap();
                    let bytes = store.get_bytes(&d).unwrap();
                    assert_eq!(Digest::of(DigestFunction::Blake3, &bytes), d);
                }
            }
        }
        let builds = store.builds(100).unwrap();
        for b in &builds {
            store.build_actions(b.id).unwrap();
        }
        let report = store.verify().unwrap();
        assert!(report.corrupt.is_empty(), "round {round}: {report:?}");
        assert!(store.verify().unwrap().is_clean());
        // The store stays usable.
        let d = store.put_bytes(b"after crash").unwrap();
        store
            .ac_put(&action(999), &result_with(&[("z", d)]), "//:z")
            .unwrap();
        eprintln!(
            "crash round {round}: {hits} hits, {} builds, {report:?}",
            builds.len()
        );
    }
}

#[test]
fn a_damaged_table_definition_replaces_the_index_and_keeps_the_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let d = {
        let s = Store::open(dir.path()).unwrap();
        s.put_bytes(b"kept").unwrap()
    };
    // A table of the wrong type under one of the store's names: what a flipped byte in the
    // table tree reads as.
    {
        let db = redb::Database::open(dir.path().join("index.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.delete_table(crate::tables::BLOBS).unwrap();
        let wrong: redb::TableDefinition<&[u8], u8> = redb::TableDefinition::new("blobs_v1");
        txn.open_table(wrong).unwrap();
        txn.commit().unwrap();
    }
    let s = Store::open(dir.path()).unwrap();
    match s.index_check() {
        Some(crate::IndexCheck::Replaced { aside, reason }) => {
            assert!(aside.exists(), "{}", aside.display());
            assert!(reason.contains("blobs_v1"), "{reason}");
        }
        other => panic!("expected the index to be replaced, got {other:?}"),
    }
    assert_eq!(s.get_bytes(&d).unwrap(), b"kept");
    drop(s);
    // The replacement is an ordinary index: the next open needs no repair.
    assert_eq!(Store::open(dir.path()).unwrap().index_check(), None);
}

#[test]
fn an_index_with_a_damaged_header_is_moved_aside_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let d = Store::open(dir.path()).unwrap().put_bytes(b"kept").unwrap();
    let index = dir.path().join("index.redb");
    // A wrong magic number, then a truncated file (page pointers past its end).
    for damage in [0usize, 1] {
        let mut bytes = fs::read(&index).unwrap();
        if damage == 0 {
            bytes[0] ^= 0xff;
        } else {
            bytes.truncate(bytes.len() / 3);
        }
        fs::write(&index, bytes).unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.get_bytes(&d).unwrap(), b"kept");
    }
    let aside = fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".redb.broken-")
        })
        .count();
    assert!(aside >= 1, "nothing moved aside");
}

/// `open_with_index_backend` (what the `store_model` fuzz target injects I/O failures
/// through) opens the same index as `open`.
#[test]
fn the_index_backend_can_be_supplied() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let opener: crate::IndexOpener = Arc::new(move |builder: &redb::Builder, file| {
        counted.fetch_add(1, Ordering::SeqCst);
        builder.create_with_backend(redb::backends::FileBackend::new(file)?)
    });
    let action = Digest::of(DigestFunction::Blake3, b"backend action");
    let s = Store::open_with_index_backend(
        dir.path(),
        DigestFunction::Blake3,
        Duration::from_secs(5),
        opener,
    )
    .unwrap();
    let d = s.put_bytes(b"through a custom backend").unwrap();
    s.ac_put(&action, &result_with(&[("o", d)]), "//:b")
        .unwrap();
    drop(s);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.ac_get(&action).unwrap(), Some(result_with(&[("o", d)])));
}

fn pending(command: &str, cached: u64) -> crate::BuildRecord {
    crate::BuildRecord {
        id: 0,
        command: command.into(),
        targets: vec!["//...".into()],
        start_unix_ms: 1,
        end_unix_ms: Some(2),
        outcome: Some("success".into()),
        executed: 0,
        cached,
        failed: 0,
    }
}

#[test]
fn builds_recorded_without_the_index_are_folded_once_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let b = store.begin_build("build", &["//a".into()]).unwrap();
        store.finish_build(b, "success").unwrap();
    }
    // Three no-ops, recorded while no process has the index open, one a torn line.
    crate::record_pending_build(dir.path(), &pending("build", 5)).unwrap();
    crate::record_pending_build(dir.path(), &pending("test", 6)).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join(crate::PENDING_BUILDS))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"id\":0,\"comm"))
        .unwrap();
    let store = Store::open(dir.path()).unwrap();
    let builds = store.builds(10).unwrap();
    let summary: Vec<(u64, &str, u64)> = builds
        .iter()
        .map(|b| (b.id, b.command.as_str(), b.cached))
        .collect();
    assert_eq!(
        summary,
        vec![(3, "test", 6), (2, "build", 5), (1, "build", 0)]
    );
    assert!(!dir.path().join(crate::PENDING_BUILDS).exists());
    drop(store);
    // Reopening folds nothing twice.
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.builds(10).unwrap().len(), 3);
    drop(store);

    // A fold that never committed left its file: folded now.
    let leftover = dir.path().join("history-pending-1-1.folding");
    let line = format!("{}\n", serde_json::to_string(&pending("build", 7)).unwrap());
    fs::write(&leftover, &line).unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.builds(10).unwrap().len(), 4);
    assert!(!leftover.exists());
    drop(store);
    // One that committed (its marker is there) but died before removing the file: not
    // folded again, and removed.
    fs::write(&leftover, &line).unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.builds(10).unwrap().len(), 4);
    assert!(!leftover.exists());
}

#[test]
fn no_pending_build_is_lost_to_a_fold_running_at_the_same_time() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let path = dir.path().to_path_buf();
    let writer = std::thread::spawn(move || {
        for i in 0..300 {
            crate::record_pending_build(&path, &pending("build", i)).unwrap();
        }
    });
    // Folds while the lines arrive.
    while !writer.is_finished() {
        drop(Store::open(dir.path()).unwrap());
    }
    writer.join().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut cached: Vec<u64> = store
        .builds(1000)
        .unwrap()
        .iter()
        .map(|b| b.cached)
        .collect();
    cached.sort_unstable();
    assert_eq!(cached, (0..300).collect::<Vec<u64>>());
}

#[test]
fn a_pending_file_whose_lock_stays_held_is_left_for_a_later_open() {
    // A process that holds the lock of a pending file (a stuck or hostile one) does not
    // make opening the store wait without end: the file is left, and folded once free.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let aside = dir.path().join("history-pending-9-9.folding");
    fs::write(
        &aside,
        format!("{}\n", serde_json::to_string(&pending("build", 3)).unwrap()),
    )
    .unwrap();
    let holder = fs::File::open(&aside).unwrap();
    let fd = std::os::unix::io::AsRawFd::as_raw_fd(&holder);
    // SAFETY: flock on a descriptor this test owns.
    let locked = unsafe { libc::flock(fd, libc::LOCK_SH) };
    assert_eq!(locked, 0);
    store.fold_pending(Duration::from_millis(50)).unwrap();
    assert!(aside.exists());
    assert!(store.builds(10).unwrap().is_empty());
    drop(holder);
    store.fold_pending(Duration::from_millis(50)).unwrap();
    assert_eq!(store.builds(10).unwrap().len(), 1);
    assert!(!aside.exists());
}
