//! The per-action access log: what a guest touched, as the guest named it.

use serde::{Deserialize, Serialize};

/// What the guest did with a path.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessKind {
    /// Opened a file (or directory) for reading.
    Read,
    /// Created, truncated or opened a file for writing, or created a directory.
    Write,
    /// Asked for metadata of an existing path.
    Stat,
    /// Listed a directory.
    List,
    /// Looked up a path that does not exist.
    Missing,
    /// Tried something the sandbox refused: a write outside the declared outputs and `/tmp`,
    /// or a path that escapes the sandbox (`..` above the root, symlinks pointing outside).
    Denied,
}

/// One observed access.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Access {
    pub kind: AccessKind,
    /// The path as the guest sees it: workspace-relative (`gen/x.h`) for the root, absolute
    /// (`/tmp/x`) for the private temp directory. Escapes keep the raw text the guest used.
    pub path: String,
}

/// Every access of one action, in the order they happened, without repeats.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessLog {
    pub accesses: Vec<Access>,
    #[serde(skip)]
    seen: std::collections::HashSet<(AccessKind, String)>,
}

impl AccessLog {
    pub fn record(&mut self, kind: AccessKind, path: &str) {
        if self.seen.insert((kind, path.to_owned())) {
            self.accesses.push(Access {
                kind,
                path: path.to_owned(),
            });
        }
    }

    /// Paths accessed with `kind`, in order.
    pub fn paths(&self, kind: AccessKind) -> impl Iterator<Item = &str> {
        self.accesses
            .iter()
            .filter(move |a| a.kind == kind)
            .map(|a| a.path.as_str())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.accesses).expect("access log serialises")
    }

    pub fn from_json(s: &str) -> Result<AccessLog, serde_json::Error> {
        let accesses: Vec<Access> = serde_json::from_str(s)?;
        let mut log = AccessLog::default();
        for a in accesses {
            log.record(a.kind, &a.path);
        }
        Ok(log)
    }
}
