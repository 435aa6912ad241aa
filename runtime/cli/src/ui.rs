//! Progress display, the one-line summary and the `--events` JSON-lines file.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use wbuild_sched::{Event, EventSink, Status, Summary};

pub struct Ui {
    bar: Option<ProgressBar>,
    events: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
}

pub fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

impl Ui {
    pub fn new(total: usize, events: Option<&Path>) -> Result<Ui> {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(total as u64);
            b.set_style(
                ProgressStyle::with_template("[{elapsed}] {bar:30} {pos}/{len} {wide_msg}")
                    .expect("progress template"),
            );
            b
        });
        let events = match events {
            Some(p) => Some(Mutex::new(std::io::BufWriter::new(
                std::fs::File::create(p)
                    .with_context(|| format!("cannot create events file {}", p.display()))?,
            ))),
            None => None,
        };
        Ok(Ui { bar, events })
    }

    /// The display for another round of the same build, of `total` actions.
    pub fn restart(&self, total: usize) {
        if let Some(b) = &self.bar {
            b.set_length(total as u64);
            b.set_position(0);
        }
    }

    fn say(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self, s: &Summary, tests: bool) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        if let Some(e) = &self.events {
            let _ = e.lock().expect("events file").flush();
        }
        let what = if tests { "Test run" } else { "Build" };
        let verdict = if s.interrupted {
            "interrupted"
        } else if s.success() {
            "succeeded"
        } else {
            "FAILED"
        };
        let mut line = format!(
            "{what} {verdict}: {} executed, {} cached",
            s.executed, s.cached
        );
        if s.remote_executed > 0 {
            line.push_str(&format!(", {} on remote workers", s.remote_executed));
        }
        if s.remote_cached > 0 {
            line.push_str(&format!(", {} from the remote cache", s.remote_cached));
        }
        line.push_str(&format!(", {} failed", s.failed));
        if s.skipped > 0 {
            line.push_str(&format!(", {} skipped", s.skipped));
        }
        line.push_str(&format!(" in {:.2}s", s.duration.as_secs_f64()));
        eprintln!("{line}");
    }
}

impl EventSink for Ui {
    fn event(&self, e: &Event) {
        if let Some(f) = &self.events {
            let mut f = f.lock().expect("events file");
            let _ = serde_json::to_writer(&mut *f, e);
            let _ = f.write_all(b"\n");
        }
        if let Event::Warning { message } = e {
            self.say(&format!("warning: {message}"));
        }
        if let Event::Action {
            label,
            detail,
            status,
            duration_ms,
            error,
            output,
            warnings,
            worker,
            ..
        } = e
        {
            let label = match detail {
                Some(d) => format!("{label} {d}"),
                None => label.clone(),
            };
            if let Some(b) = &self.bar {
                b.inc(1);
                b.set_message(label.clone());
            }
            match status {
                Status::Failed => {
                    self.say(&format!(
                        "FAILED {label}: {}",
                        error.as_deref().unwrap_or("unknown error")
                    ));
                }
                Status::Executed if self.bar.is_none() => {
                    self.say(&format!("executed {label} ({duration_ms} ms)"));
                }
                Status::RemoteExecuted if self.bar.is_none() => {
                    self.say(&format!(
                        "executed {label} on {} ({duration_ms} ms)",
                        worker.as_deref().unwrap_or("a remote worker")
                    ));
                }
                _ => {}
            }
            for w in warnings {
                self.say(&format!("warning: {w}"));
            }
            if let Some(out) = output {
                for l in out.lines() {
                    self.say(&format!("  | {l}"));
                }
            }
        }
    }
}
