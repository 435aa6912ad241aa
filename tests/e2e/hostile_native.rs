//! Hostile native actions through the real `wbuild` binary: a genrule that tries to remount
//! its (CAS-backed, read-only) input and the host's /usr writable, and a C library that
//! includes a header planted in the host's /usr/local/include, which no action key covers.

use std::path::{Path, PathBuf};

use wbuild_tests::{stderr, stdout};

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
