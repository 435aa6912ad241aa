//! Hostile native actions through the real `wbuild` binary: a genrule that tries to remount
//! its (CAS-backed, read-only) input and the host's /usr writable, and a C library that
//! includes a header planted in the host's /usr/local/include, which no action key covers.

use std::path::{Path, PathBuf};

use wbuild_tests::{statuses, stderr, stdout};

use super::ws;

/// A unique name for files planted on the host.
fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("wbuild_hostile_{tag}_{}_{nanos}", std::process::id())
}

/// Removes the planted host files when the test ends, however it ends.
struct Planted(Vec<PathBuf>);

impl Drop for Planted {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

const REFERENCE: &str = "reference bytes\n";

#[test]
fn genrule_cannot_remount_its_input_or_usr_writable() {
    let w = ws();
    let name = unique("usr");
    let host_usr = Path::new("/usr").join(&name);
    let _planted = Planted(vec![host_usr.clone()]);
    w.write("h/in.txt", REFERENCE);
    w.write(
        "h/WBUILD",
        &format!(
            r#"
genrule(
    name = "escape",
    srcs = ["in.txt"],
    outs = ["escape.txt"],
    cmd = "mount -o remount,bind,rw $(location in.txt); echo PWNED > $(location in.txt); " +
          "mount -o remount,bind,rw /usr; touch /usr/{name}; " +
          "grep -q PWNED $(location in.txt) || test -e /usr/{name} || exit 3; echo escaped > $@",
)
genrule(
    name = "copy",
    srcs = ["in.txt"],
    outs = ["copy.txt"],
    cmd = "cat $(location in.txt) > $@",
)
"#
        ),
    );
    let out = w.fail(&["build", "//h:escape"]);
    let err = stderr(&out);
    assert!(
        err.contains("FAILED //h:escape: the command exited with code 3"),
        "{err}"
    );
    assert!(err.contains("ermission denied"), "{err}");
    assert!(
        !host_usr.exists(),
        "{} appeared on the host",
        host_usr.display()
    );
    assert_eq!(w.read("h/in.txt"), REFERENCE);
    let verify = stdout(&w.ok(&["cache", "verify"]));
    assert!(verify.contains("cache is consistent"), "{verify}");
    assert!(!verify.contains("corrupt"), "{verify}");

    // The input's blob is intact: an action reading it gets the reference bytes, also in a
    // clean output tree.
    w.ok(&["build", "//h:copy"]);
    assert_eq!(w.read("wbuild-out/h/copy.txt"), REFERENCE);
    std::fs::remove_dir_all(w.path("wbuild-out")).unwrap();
    w.ok(&["build", "//h:copy"]);
    assert_eq!(w.read("wbuild-out/h/copy.txt"), REFERENCE);
}

#[test]
fn headers_planted_in_usr_local_are_not_seen() {
    let w = ws();
    let name = unique("hdr");
    let header = Path::new("/usr/local/include").join(format!("{name}.h"));
    assert!(
        header.parent().unwrap().is_dir(),
        "/usr/local/include is missing"
    );
    let _planted = Planted(vec![header.clone()]);
    std::fs::write(&header, "#define PLANTED_VALUE 1\n").unwrap();
    w.write(
        "p/planted.c",
        &format!("#include <{name}.h>\nint planted(void) {{ return PLANTED_VALUE; }}\n"),
    );
    w.write(
        "p/probe.c",
        &format!(
            "#if __has_include(<{name}.h>)\n#error the planted header is visible\n#endif\n\
             int probe(void) {{ return 0; }}\n"
        ),
    );
    w.write(
        "p/WBUILD",
        r#"cc_library(name = "planted", srcs = ["planted.c"])
cc_library(name = "probe", srcs = ["probe.c"])
"#,
    );
    // gcc searches /usr/local/include by default; inside the sandbox it is empty.
    w.ok(&["build", "//p:probe"]);
    let missing = format!("{name}.h: No such file or directory");
    let err = stderr(&w.fail(&["build", "//p:planted"]));
    assert!(err.contains(&missing), "{err}");
    // Editing the planted header changes nothing: the build still cannot see it (it is
    // never served from the cache as if it had compiled).
    std::fs::write(&header, "#define PLANTED_VALUE 2\n").unwrap();
    let err = stderr(&w.fail(&["build", "//p:planted"]));
    assert!(err.contains(&missing), "{err}");
    w.ok(&["build", "//p:probe"]);
}

/// Hostile actions against the network namespaces the spawner keeps for its sandboxes (one
/// per running sandbox, reused once that sandbox is gone): two actions running at once
/// cannot reach each other through an abstract Unix socket; a listener an action leaves
/// behind in a daemon it forked is gone for the next action; an action cannot bring the
/// loopback up for the next one. (Python from the host's /usr, as a build tool would be.)
#[test]
fn native_actions_never_share_a_network() {
    let w = ws();
    network_checks(&w, &|args| {
        w.ok(args);
    });
}

/// The same, built by a user without privileges (uid 65534 through `setpriv`, when the tests
/// run as root; otherwise the test above already is that): the spawner then makes a user
/// namespace of its own to keep network namespaces in, and the sandboxes' user namespaces
/// are made inside it.
#[test]
fn native_actions_of_an_unprivileged_build_never_share_a_network() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let w = ws();
    let dir = w.root.parent().unwrap().to_path_buf();
    // The binary, where uid 65534 may run it; the workspace and cache, where it may write.
    let bin = dir.join("wbuild");
    std::fs::copy(super::BIN, &bin).unwrap();
    let status = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&dir)
        .status()
        .expect("chown");
    assert!(status.success());
    network_checks(&w, &|args| {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "env"])
            .arg(format!("HOME={}", dir.display()))
            .arg(&bin)
            .arg("--cache-dir")
            .arg(&w.cache)
            .args(args)
            .current_dir(&w.root)
            .env_remove("WBUILD_CACHE");
        let out = wbuild_tests::process::output_with_deadline(
            &mut cmd,
            wbuild_tests::process::default_deadline(),
        )
        .expect("within the deadline");
        assert!(
            out.status.success(),
            "{args:?} as uid 65534: {}{}",
            stdout(&out),
            stderr(&out)
        );
    });
}

/// Builds (through `build`) actions that try to reach each other over the network, and
/// checks that they could not.
fn network_checks(w: &wbuild_tests::TestWorkspace, build: &dyn Fn(&[&str])) {
    w.write(
        "n/WBUILD",
        r#"
# Each records when it ran (the test checks that the two overlapped) and what it reached.
genrule(name = "listen", srcs = [], outs = ["listen.txt"], cmd = """python3 -c '
import socket, sys, time
t0 = time.time()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("\\0wbuild-hostile-net")
s.listen(1)
s.settimeout(3)
try:
    s.accept(); r = "accepted"
except OSError:
    r = "alone"
open(sys.argv[1], "w").write("%s %f %f\\n" % (r, t0, time.time()))
' $@""")
genrule(name = "connect", srcs = [], outs = ["connect.txt"], cmd = """python3 -c '
import socket, sys, time
t0 = time.time()
r = "isolated"
while time.time() < t0 + 3:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        c.connect("\\0wbuild-hostile-net"); r = "connected"; break
    except OSError:
        time.sleep(0.05)
open(sys.argv[1], "w").write("%s %f %f\\n" % (r, t0, time.time()))
' $@""")
genrule(name = "leave", srcs = [], outs = ["leave.txt"], cmd = """python3 -c '
import fcntl, os, socket, struct, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("\\0wbuild-hostile-left")
s.listen(5)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    fcntl.ioctl(u, 0x8914, struct.pack("16sH14x", b"lo", 1)); r = "brought loopback up"
except OSError:
    r = "denied"
if os.fork() == 0:
    os.setsid(); time.sleep(30); os._exit(0)
open(sys.argv[1], "w").write(r + "\\n")
' $@; readlink /proc/self/ns/net >> $@""")
genrule(name = "after", srcs = [":leave"], outs = ["after.txt"], cmd = """python3 -c '
import socket, sys
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    c.connect("\\0wbuild-hostile-left"); r = "reached a listener of an earlier action"
except OSError:
    r = "gone"
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.settimeout(2)
try:
    t.connect(("127.0.0.1", 9)); r += " loopback-connected"
except OSError as e:
    r += " " + ("unreachable" if e.errno == 101 else "errno-%d" % e.errno)
open(sys.argv[1], "w").write(r + "\\n")
' $@; readlink /proc/self/ns/net >> $@""")
"#,
    );
    build(&["build", "-j", "2", "//n:listen", "//n:connect"]);
    let field = |f: &str| -> (String, f64, f64) {
        let text = w.read(f);
        let v: Vec<&str> = text.split_whitespace().collect();
        (
            v[0].to_owned(),
            v[1].parse().unwrap(),
            v[2].parse().unwrap(),
        )
    };
    let (listen, l0, l1) = field("wbuild-out/n/listen.txt");
    let (connect, c0, c1) = field("wbuild-out/n/connect.txt");
    // The two ran at the same time, or the test proved nothing.
    assert!(l0 < c1 && c0 < l1, "no overlap: {l0}..{l1} and {c0}..{c1}");
    assert_eq!((listen.as_str(), connect.as_str()), ("alone", "isolated"));

    // One after the other (one job): the second may get the first's namespace.
    build(&["build", "-j", "1", "//n:after"]);
    let leave = w.read("wbuild-out/n/leave.txt");
    let after = w.read("wbuild-out/n/after.txt");
    assert!(leave.starts_with("denied\n"), "{leave}");
    assert!(after.starts_with("gone unreachable\n"), "{after}");
    // The spawner keeps namespaces: the second action ran in the first one's, so the checks
    // above were made where the first action left its listener.
    let ns = |t: &str| t.lines().nth(1).unwrap_or_default().to_owned();
    assert_eq!(ns(&leave), ns(&after), "{leave}{after}");
}

/// A compile's inputs are one read-only tree, kept for the slot's next compile: a compile
/// told to write its depfile over one of its inputs cannot (and the input stays whole), and
/// the next compile in the slot sees none of the last one's inputs.
#[test]
fn a_compile_cannot_write_its_inputs_and_the_next_one_sees_none_of_them() {
    let w = ws();
    w.write("a/include/a/secret.h", "#define SECRET 42\n");
    w.write(
        "a/a.c",
        "#include \"a/secret.h\"\nint a(void) { return SECRET; }\n",
    );
    w.write(
        "a/WBUILD",
        r#"cc_library(name = "a", srcs = ["a.c"], hdrs = ["include/a/secret.h"], includes = ["include"])
cc_library(name = "over", srcs = ["a.c"], deps = [":a"], copts = ["-MF", "a/include/a/secret.h"])
"#,
    );
    // (-MF given twice: GCC writes the depfile to the last one, a declared input.)
    let out = w.run(&["build", "-j", "1", "//a:over"]);
    assert!(!out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("a/include/a/secret.h"), "{err}");
    assert_eq!(w.read("a/include/a/secret.h"), "#define SECRET 42\n");
    let verify = stdout(&w.ok(&["cache", "verify"]));
    assert!(!verify.contains("corrupt"), "{verify}");

    // //b:b includes a's header without declaring it; on one slot its compile runs after
    // //a:a's (it waits for a header generated from //a:a), whose tree held that header.
    w.write(
        "b/b.c",
        "#include \"a/secret.h\"\nint b(void) { return SECRET; }\n",
    );
    w.write(
        "b/WBUILD",
        r#"genrule(name = "gen", srcs = ["//a:a"], outs = ["gen.h"], cmd = "echo '#define G 1' > $@")
cc_library(name = "b", srcs = ["b.c", ":gen"], copts = ["-Ia/include"])
"#,
    );
    w.ok(&["clean", "--expunge"]);
    let (out, ev) = w.events(&["build", "-j", "1", "--keep-going", "//a:a", "//b:b"]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(
        statuses(&ev).contains(&("//a:a a/a.c".to_owned(), "executed".to_owned())),
        "{ev:?}"
    );
    // Not even the directory is there: GCC drops -Ia/include before looking in it.
    let err = stderr(&out);
    assert!(
        err.contains("a/secret.h: No such file or directory"),
        "{err}"
    );
}

/// A compile option that writes into the working directory (`-save-temps`) works: a compile
/// that fails with the read-only tree runs again with a scratch `/work`.
#[test]
fn a_compile_writing_into_its_working_directory_still_builds() {
    let w = ws();
    w.write("s/s.c", "int s(void) { return 1; }\n");
    w.write(
        "s/WBUILD",
        r#"cc_library(name = "s", srcs = ["s.c"], copts = ["-save-temps"])"#,
    );
    w.ok(&["build", "//s:s"]);
    assert!(w.path("wbuild-out/s/libs.a").exists());
}
