//! `wbuild report --html FILE`: the build report page, rendered by headless Chromium.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use wbuild_tests::process::output_with_deadline;
use wbuild_tests::stderr;

use super::{chain, ws};

/// How long one headless Chromium run may take before it is killed.
const CHROMIUM_DEADLINE: Duration = Duration::from_secs(60);

/// Debian's `chromium` (installed by tests/setup.sh).
fn chromium() -> PathBuf {
    let path = PathBuf::from("/usr/bin/chromium");
    assert!(
        path.exists(),
        "{} is missing: the report test renders the page in headless Chromium; run tests/setup.sh (it installs Debian's `chromium`)",
        path.display()
    );
    path
}

/// Headless Chromium on `url` with `mode` (`--dump-dom`, `--screenshot=PNG`), its profile
/// in a fresh directory under `scratch`; returns what it printed on stdout.
fn chromium_run(scratch: &Path, mode: &str, url: &str) -> String {
    let profile = tempfile::Builder::new()
        .prefix("chromium-profile-")
        .tempdir_in(scratch)
        .unwrap();
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,900",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(mode)
    .arg(url)
    .env("HOME", profile.path());
    let out = output_with_deadline(&mut cmd, CHROMIUM_DEADLINE).unwrap_or_else(|t| panic!("{t}"));
    assert!(
        out.status.success(),
        "chromium {mode} {url} failed: {:?}\n{}",
        out.status,
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A screenshot of `url`: checks it is a PNG of the window's size and returns its length.
fn screenshot(scratch: &Path, url: &str, png: &Path) -> u64 {
    chromium_run(scratch, &format!("--screenshot={}", png.display()), url);
    let bytes =
        std::fs::read(png).unwrap_or_else(|e| panic!("no screenshot {}: {e}", png.display()));
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        png.display()
    );
    assert_eq!(&bytes[12..16], b"IHDR");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (1200, 900), "{}", png.display());
    bytes.len() as u64
}

/// The `id="action-N"` index of the timeline bar labelled `label` in `html`.
fn bar_index(html: &str, label: &str) -> usize {
    let at = html
        .find(&format!("data-label=\"{label}\""))
        .unwrap_or_else(|| panic!("no timeline bar for {label}"));
    let id = html[..at].rfind("id=\"action-").unwrap() + "id=\"action-".len();
    html[id..].split('"').next().unwrap().parse().unwrap()
}

#[test]
fn the_report_page_renders_in_chromium_with_every_action_and_its_details() {
    // Fails at once, before any build, where Chromium is missing.
    chromium();
    let w = ws();
    chain(&w);
    // A failing action and one that looks for a file in vain, beside the chain; a slow step
    // after the chain's end makes ab -> abab -> slow the critical path whatever the load.
    w.write(
        "gen/WBUILD",
        &format!(
            "{}wasi_run(name = \"bad\", tool = \"//tools:probe\", outs = [\"bad.txt\"], args = [\"exit\", \"3\"])\n\
             wasi_run(name = \"look\", tool = \"//tools:probe\", outs = [\"look.txt\"], args = [\"exists\", \"gen/nope.txt\", \"$@\"])\n\
             wasi_run(name = \"slow\", tool = \"//tools:probe\", srcs = [\":abab\"], outs = [\"slow.txt\"], args = [\"spin\", \"20000000\", \"$@\"])\n",
            w.read("gen/WBUILD")
        ),
    );
    // //other:c first, so the full build has a cache hit.
    w.ok(&["build", "//other:c"]);
    let out = w.fail(&["build", "-k", "-j", "2", "//..."]);
    let labels = [
        "//gen:ab",
        "//gen:abab",
        "//gen:bad",
        "//gen:look",
        "//gen:slow",
        "//other:c",
    ];

    let scratch = w.root.parent().unwrap().to_path_buf();
    let page = scratch.join("report.html");
    let printed = w.ok(&["report", "--html", page.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&printed.stdout).contains("report written to"),
        "{}",
        stderr(&printed)
    );
    let html = std::fs::read_to_string(&page).unwrap();
    for bad in ["http://", "https://", "src=", "href="] {
        assert!(!html.contains(bad), "the report names a URL ({bad})");
    }
    for l in labels {
        assert!(
            html.contains(l),
            "{l} missing from the report\n{}",
            stderr(&out)
        );
    }
    // What failed and why: the tool's own message.
    assert!(html.contains("probe: exiting with 3"), "{html}");
    // An unknown build and an unwritable file are errors that say what to do.
    let err = stderr(&w.fail(&["report", "999", "--html", page.to_str().unwrap()]));
    assert!(err.contains("wbuild history"), "{err}");
    let nowhere = scratch.join("no/such/dir/report.html");
    let err = stderr(&w.fail(&["report", "--html", nowhere.to_str().unwrap()]));
    assert!(
        err.contains(&format!("cannot write the report to {}", nowhere.display())),
        "{err}"
    );

    // Open with the details of //gen:look shown (as a click on it does).
    let look = bar_index(&html, "//gen:look");
    let url = format!("file://{}#action-{look}", page.display());
    let dom = chromium_run(&scratch, "--dump-dom", &url);
    assert!(dom.contains("id=\"timeline\""), "{dom}");
    for l in labels {
        assert!(
            dom.contains(&format!("data-label=\"{l}\"")),
            "no timeline bar for {l} in the rendered DOM"
        );
    }
    // The script ran: the details panel holds //gen:look's access summary.
    let details = &dom[dom.find("id=\"details\"").expect("a details panel")..];
    assert!(details.contains("<h2>//gen:look</h2>"), "{details}");
    assert!(details.contains("id=\"access-summary\""), "{details}");
    assert!(details.contains("1 missing"), "{details}");
    assert!(details.contains("gen/nope.txt"), "{details}");
    // The critical path of the build (ab -> abab -> slow, the longest chain) is marked.
    let abab = bar_index(&html, "//gen:abab");
    let bar_open = html[..html.find(&format!("id=\"action-{abab}\"")).unwrap()]
        .rfind("<div")
        .unwrap();
    assert!(html[bar_open..].starts_with("<div class=\"bar st-executed crit\""));

    // The screenshot shows the page: far more than a blank page of the same size
    // compresses to (a one-colour 1200x900 PNG is about 5 KB).
    let blank = scratch.join("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><html><body></body></html>").unwrap();
    let blank_len = screenshot(
        &scratch,
        &format!("file://{}", blank.display()),
        &scratch.join("blank.png"),
    );
    let png = scratch.join("report.png");
    let len = screenshot(&scratch, &format!("file://{}", page.display()), &png);
    assert!(
        len > 3 * blank_len,
        "the screenshot {} ({len} bytes) is hardly bigger than a blank page's ({blank_len} bytes): the page did not render",
        png.display()
    );
}
