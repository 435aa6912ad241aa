//! Loading: target patterns -> packages evaluated -> references resolved -> [`TargetGraph`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::eval::{GlobRead, Interpreter, RawTarget};
use crate::glob::skip_dir;
use crate::label::{Label, TargetPattern, join};
use crate::rules::{MapRefs, Want};
use crate::workspace::{BUILD_FILE, Workspace};
use crate::{Dep, GraphError, Location, Target, TargetGraph};

/// Loads the packages needed for `patterns` and resolves the targets they need.
///
/// Returns every target of every loaded package, and the labels of the targets the patterns
/// matched (sorted; a label naming an output file stands for the target producing it).
/// Errors: Starlark errors, unknown packages/targets/files (naming the referencing target and
/// its location), output collisions, and dependency cycles among the needed targets.
pub fn load(
    ws: &Workspace,
    patterns: &[TargetPattern],
) -> Result<(TargetGraph, Vec<Label>), GraphError> {
    let loaded = load_reading(ws, patterns)?;
    Ok((loaded.graph, loaded.matched))
}

/// What [`load_reading`] gives.
pub(crate) struct Loaded {
    pub graph: TargetGraph,
    /// The targets the patterns matched.
    pub matched: Vec<Label>,
    /// A dependency cycle among the needed targets ([`load_reading`] refuses the graph).
    cycle: Option<GraphError>,
    /// What loading read of the file system besides build files.
    pub learnt: Learnt,
}

/// As [`load`], with what loading read of the file system besides build files.
pub(crate) fn load_reading(
    ws: &Workspace,
    patterns: &[TargetPattern],
) -> Result<Loaded, GraphError> {
    let mut loaded = load_keeping_cycles_reading(ws, patterns)?;
    match loaded.cycle.take() {
        Some(cycle) => Err(cycle),
        None => Ok(loaded),
    }
}

/// As [`load`], but a dependency cycle among the needed targets does not stop it: the graph
/// is returned with the cycle found (a [`GraphError::Cycle`]), for `wbuild query` to answer
/// over it and report it.
pub(crate) fn load_keeping_cycles(
    ws: &Workspace,
    patterns: &[TargetPattern],
) -> Result<(TargetGraph, Vec<Label>, Option<GraphError>), GraphError> {
    let loaded = load_keeping_cycles_reading(ws, patterns)?;
    Ok((loaded.graph, loaded.matched, loaded.cycle))
}

fn load_keeping_cycles_reading(
    ws: &Workspace,
    patterns: &[TargetPattern],
) -> Result<Loaded, GraphError> {
    let mut loader = Loader {
        ws,
        interp: Some(Interpreter::new(ws.root.clone())),
        packages: FxHashMap::default(),
        listings: Listings::default(),
        logs: Vec::new(),
    };
    let matched = loader.match_patterns(patterns)?;

    // Resolve the closure of the matched targets, checking every reference: ahead on every
    // core, then in order for what is left.
    let (ahead, asked) = loader.resolve_ahead(&matched);
    loader.logs.extend(asked);
    // The targets resolved ahead, in label order (as the loaded packages list them), looked
    // up by a hashed index of borrowed labels (a B-tree of labels compared strings at every
    // level; a map holding the targets themselves was a third copy of them, 100,000 targets).
    let index: FxHashMap<&Label, &Target> = ahead.iter().flatten().map(|(l, r)| (l, r)).collect();
    let mut globs = Vec::new();
    let mut targets = Vec::with_capacity(loader.packages.values().map(|p| p.targets.len()).sum());
    // One search both checks that everything the roots need was resolved ahead and looks
    // for a cycle among it.
    let searched = search_closure(
        &matched,
        |l| index.get(l).map(|t| deps(t)),
        |l| index.get(l).map(|t| t.location.clone()),
    );
    let cycle = if let Some(searched) = searched {
        let cycle = searched.err();
        drop(index);
        let loaded: usize = loader.packages.values().map(|p| p.targets.len()).sum();
        if ahead.iter().map(Vec::len).sum::<usize>() == loaded {
            // Every loaded target was resolved ahead (those are some of them, each once): the
            // evaluated packages go before the targets are gathered, not after (the load's
            // peak of memory held both, 20-30 MB more for 100,000 targets).
            for pkg in loader.packages_in_order() {
                globs.extend(pkg.globs.iter().cloned());
            }
            crate::drop_elsewhere(std::mem::take(&mut loader.packages));
            targets.extend(ahead.into_iter().flatten());
        } else {
            // Both in label order: each loaded target takes its resolution from ahead when it
            // is the next one there.
            let mut ahead = ahead.into_iter().flatten().peekable();
            loader.other_targets(&mut targets, &mut globs, |label| {
                while ahead.peek().is_some_and(|(l, _)| l < label) {
                    ahead.next();
                }
                ahead.next_if(|(l, _)| l == label)
            });
        }
        cycle
    } else {
        drop(index);
        let mut ahead: FxHashMap<Label, Target> = ahead.into_iter().flatten().collect();
        let mut resolved: FxHashMap<Label, Target> = FxHashMap::default();
        let mut queue: VecDeque<Label> = matched.iter().cloned().collect();
        while let Some(label) = queue.pop_front() {
            if resolved.contains_key(&label) {
                continue;
            }
            let target = match ahead.remove(&label) {
                Some(done) => done,
                None => loader.resolve_target(&label)?,
            };
            queue.extend(deps(&target).iter().cloned());
            resolved.insert(label, target);
        }
        let cycle = find_cycle(
            &matched,
            |l| resolved.get(l).map(deps),
            |l| resolved.get(l).map(|t| t.location.clone()),
        )
        .err();
        loader.other_targets(&mut targets, &mut globs, |label| {
            resolved.remove(label).map(|t| (label.clone(), t))
        });
        cycle
    };
    // The evaluated packages and the directories' listings are freed (on another thread)
    // while the targets are indexed and analysed.
    crate::drop_elsewhere((
        std::mem::take(&mut loader.packages),
        std::mem::take(&mut loader.listings.known),
    ));
    let graph = TargetGraph {
        targets: targets.into_iter().collect(),
    };
    let mut logs = std::mem::take(&mut loader.logs);
    logs.push(std::mem::take(&mut loader.listings.log));
    Ok(Loaded {
        graph,
        matched: matched.into_iter().collect(),
        cycle,
        learnt: Learnt { logs, globs },
    })
}

/// The targets a resolved target depends on (none for one resolved leniently).
fn deps(t: &Target) -> &[Label] {
    t.deps.as_deref().unwrap_or_default()
}

/// Whether every target `roots` need, their dependencies included, is resolved: `edges`
/// gives a resolved target's dependencies.
fn closed<'e>(roots: &'e BTreeSet<Label>, edges: impl Fn(&Label) -> Option<&'e [Label]>) -> bool {
    let mut seen: rustc_hash::FxHashSet<&Label> = rustc_hash::FxHashSet::default();
    seen.reserve(roots.len());
    let mut stack: Vec<&Label> = roots.iter().collect();
    while let Some(label) = stack.pop() {
        if !seen.insert(label) {
            continue;
        }
        let Some(edges) = edges(label) else {
            return false;
        };
        stack.extend(edges);
    }
    true
}

/// A target resolved ahead: its label and the target (with the targets it depends on,
/// [`Target::deps`]).
type Resolved = (Label, Target);

/// Directories' listings by workspace path (`None`: the directory cannot be listed).
type Listed = FxHashMap<String, Option<FxHashMap<String, Kind>>>;

/// Directory listings read once: the loader asks about hundreds of thousands of paths
/// (whether a reference names a file, whether an output would overwrite one), nearly all in a
/// few directories, and a stat each (walking the whole path) was a third of a cold load. A
/// symbolic link, or a path this cannot split, is stat'ed as before.
#[derive(Default)]
struct Listings {
    /// Read before, shared by the loaders of every thread (the walk of `//...` lists every
    /// directory: listing each again on every thread was some 5 % of a cold load's CPU).
    known: Arc<Listed>,
    dirs: Listed,
    /// Every question answered, for [`Reads`]: path -> the answer of `find` ([`Found`]) and
    /// of `exists_no_follow` (0 or 1), each once asked. (A map: the same few paths, a tool's,
    /// are asked about once per target.)
    log: FxHashMap<String, [Option<u8>; 2]>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    /// A symbolic link or something else: ask the file system.
    Other,
}

impl Kind {
    /// What the directory entry `e` is, not following a symbolic link.
    fn of(e: &std::fs::DirEntry) -> Kind {
        match e.file_type() {
            Ok(t) if t.is_file() => Kind::File,
            Ok(t) if t.is_dir() => Kind::Dir,
            _ => Kind::Other,
        }
    }
}

/// What a path is, following symbolic links as `std::fs::metadata` does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Found {
    File,
    Dir,
    /// A FIFO, a socket, a device.
    Special,
    Missing,
}

impl Listings {
    /// The entry `path` (a workspace path) of its directory's listing; `None`: look it up.
    fn entry(&mut self, root: &Path, path: &str) -> Option<Option<Kind>> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        if name.is_empty()
            || name == "."
            || name == ".."
            || dir.split('/').any(|c| c == "." || c == "..")
            || (!dir.is_empty() && dir.split('/').any(str::is_empty))
        {
            return None;
        }
        if let Some(listing) = self.known.get(dir) {
            return Some(listing.as_ref()?.get(name).copied());
        }
        if !self.dirs.contains_key(dir) {
            let listing = Self::read(root, dir);
            self.dirs.insert(dir.to_owned(), listing);
        }
        // An unreadable directory: every path in it is looked up.
        Some(self.dirs[dir].as_ref()?.get(name).copied())
    }

    /// The entries of the directory `dir` (`None`: it cannot be listed).
    fn read(root: &Path, dir: &str) -> Option<FxHashMap<String, Kind>> {
        let entries = std::fs::read_dir(root.join(dir)).ok()?;
        let mut m = FxHashMap::default();
        for e in entries {
            let e = e.ok()?;
            m.insert(e.file_name().into_string().ok()?, Kind::of(&e));
        }
        Some(m)
    }

    /// [`Found`] for `path`, following symbolic links.
    fn find(&mut self, root: &Path, path: &str) -> Found {
        let found = self.look(root, path);
        self.note(path, 0, found as u8);
        found
    }

    fn look(&mut self, root: &Path, path: &str) -> Found {
        match self.entry(root, path) {
            Some(None) => Found::Missing,
            Some(Some(Kind::File)) => Found::File,
            Some(Some(Kind::Dir)) => Found::Dir,
            Some(Some(Kind::Other)) | None => match std::fs::metadata(root.join(path)) {
                Ok(m) if m.is_dir() => Found::Dir,
                Ok(m) if m.is_file() => Found::File,
                Ok(_) => Found::Special,
                Err(_) => Found::Missing,
            },
        }
    }

    /// Whether anything is at `path`, a symbolic link included (not followed).
    fn exists_no_follow(&mut self, root: &Path, path: &str) -> bool {
        let exists = match self.entry(root, path) {
            Some(found) => found.is_some(),
            None => std::fs::symlink_metadata(root.join(path)).is_ok(),
        };
        self.note(path, 1, exists as u8);
        exists
    }

    fn note(&mut self, path: &str, question: usize, answer: u8) {
        match self.log.get_mut(path) {
            Some(answers) => answers[question] = Some(answer),
            None => {
                let mut answers = [None; 2];
                answers[question] = Some(answer);
                self.log.insert(path.to_owned(), answers);
            }
        }
    }

    /// The questions of `logs` and their answers (in no particular order: each is asked
    /// again on its own).
    fn probes(
        logs: impl IntoIterator<Item = FxHashMap<String, [Option<u8>; 2]>>,
    ) -> Vec<(u8, String, u8)> {
        let mut probes = Vec::new();
        for log in logs {
            probes.reserve(log.len());
            for (path, answers) in log {
                match answers {
                    [Some(found), Some(exists)] => {
                        probes.push((0, path.clone(), found));
                        probes.push((1, path, exists));
                    }
                    [Some(found), None] => probes.push((0, path, found)),
                    [None, Some(exists)] => probes.push((1, path, exists)),
                    [None, None] => {}
                }
            }
        }
        probes
    }

    /// The answer to a question of `log` asked again.
    fn ask(&mut self, root: &Path, question: u8, path: &str) -> Option<u8> {
        match question {
            0 => Some(self.find(root, path) as u8),
            1 => Some(self.exists_no_follow(root, path) as u8),
            _ => None,
        }
    }
}

/// What loading learnt from the file system besides the build files: every answer taken from
/// a directory listing (whether a referenced path is a file, whether an output would overwrite
/// one) and every `glob()` with the files it found. With the build files, `wbuild.toml` and
/// the pinned toolchains unchanged (`cache::workspace_structure`), a workspace that gives the
/// same answers again loads to the same targets (see [`Reads::hold`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Reads {
    /// (question, workspace path, answer) (see `Listings::log`).
    pub probes: Vec<(u8, String, u8)>,
    pub globs: Vec<GlobRead>,
}

impl Reads {
    /// Whether every answer is still the same in the workspace at `root`.
    pub(crate) fn hold(&self, root: &Path) -> bool {
        let mut listings = Listings::default();
        self.probes
            .iter()
            .all(|(q, path, answer)| listings.ask(root, *q, path) == Some(*answer))
            && self.globs.iter().all(|g| {
                let dir = if g.package.is_empty() {
                    root.to_path_buf()
                } else {
                    root.join(&g.package)
                };
                crate::glob::glob(&dir, &g.include, &g.exclude).as_ref() == Ok(&g.files)
            })
    }
}

/// What loading learnt, as the loaders logged it: made into [`Reads`] on demand (the analysis
/// cache does it on a thread of its own while the targets are analysed).
pub(crate) struct Learnt {
    logs: Vec<FxHashMap<String, [Option<u8>; 2]>>,
    globs: Vec<GlobRead>,
}

impl Learnt {
    pub(crate) fn reads(self) -> Reads {
        Reads {
            probes: Listings::probes(self.logs),
            globs: self.globs,
        }
    }
}

/// One evaluated package.
struct Package {
    /// Shared: resolving a target reads its attributes while other packages may be loaded.
    targets: BTreeMap<String, Arc<RawTarget>>,
    /// Output name (package-relative) -> the target producing it.
    outputs: FxHashMap<String, Arc<RawTarget>>,
    /// Its `glob()` calls, for [`Reads`].
    globs: Vec<GlobRead>,
}

struct Loader<'w> {
    ws: &'w Workspace,
    /// `None` for a loader resolving ahead on another thread: it loads no package.
    interp: Option<Interpreter>,
    /// Shared with the loaders resolving ahead. Hashed: every reference resolved looks its
    /// package up, and a B-tree of 1,000 names like `lib412` compared strings at every level.
    packages: FxHashMap<String, Arc<Package>>,
    listings: Listings,
    /// The questions other threads' listings answered (see `Listings::log`).
    logs: Vec<FxHashMap<String, [Option<u8>; 2]>>,
}

impl Loader<'_> {
    /// The package `name`, evaluated on first use. `context` says who needs it (for errors).
    fn package(
        &mut self,
        name: &str,
        context: &dyn Fn() -> String,
    ) -> Result<&Package, GraphError> {
        if !self.packages.contains_key(name) {
            if !self.ws.is_package(name) {
                return Err(GraphError::NoSuchPackage {
                    package: name.to_owned(),
                    context: context(),
                });
            }
            let Some(interp) = &self.interp else {
                return Err(GraphError::NoSuchPackage {
                    package: name.to_owned(),
                    context: " (not loaded while resolving ahead)".to_owned(),
                });
            };
            let (raws, globs) = interp.eval_package(name)?;
            let pkg = check_package(self.ws, &mut self.listings, name, raws, globs)?;
            self.packages.insert(name.to_owned(), Arc::new(pkg));
        }
        Ok(&self.packages[name])
    }

    /// Evaluates and checks `names` on every core, an interpreter per thread, keeping the
    /// packages that come out clean; any other is left for [`Loader::package`] to evaluate
    /// again, in order, and report. (Evaluating the packages of `//...` one after the other was
    /// most of a cold load.)
    fn prefetch(&mut self, names: &[String]) {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(names.len());
        if threads < 2 {
            return;
        }
        let ws = self.ws;
        let loaded = &self.packages;
        let known = &self.listings.known;
        let next = std::sync::atomic::AtomicUsize::new(0);
        #[allow(clippy::type_complexity)]
        let found: Vec<(Vec<(String, Package)>, FxHashMap<String, [Option<u8>; 2]>)> =
            std::thread::scope(|s| {
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        s.spawn(|| {
                            let interp = Interpreter::new(ws.root.clone());
                            let mut listings = Listings {
                                known: known.clone(),
                                ..Listings::default()
                            };
                            let mut out = Vec::new();
                            loop {
                                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let Some(name) = names.get(i) else {
                                    break;
                                };
                                if loaded.contains_key(name) || !ws.is_package(name) {
                                    continue;
                                }
                                if let Ok((raws, globs)) = interp.eval_package(name)
                                    && let Ok(pkg) =
                                        check_package(ws, &mut listings, name, raws, globs)
                                {
                                    out.push((name.clone(), pkg));
                                }
                            }
                            (out, listings.log)
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().unwrap_or_default())
                    .collect()
            });
        for (packages, log) in found {
            self.packages
                .extend(packages.into_iter().map(|(n, p)| (n, Arc::new(p))));
            self.logs.push(log);
        }
    }

    /// Resolves `labels` on every core with the packages loaded so far, as
    /// [`Loader::resolve_target`] would. A target whose resolution fails or needs another
    /// package is left out, for the resolution in order to do again (and report).
    /// The targets come out in label order, in runs (one per chunk of labels).
    #[allow(clippy::type_complexity)]
    fn resolve_ahead(
        &self,
        labels: &BTreeSet<Label>,
    ) -> (Vec<Vec<Resolved>>, Vec<FxHashMap<String, [Option<u8>; 2]>>) {
        // Consecutive labels share a package and its directory listing.
        const CHUNK: usize = 512;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(labels.len() / CHUNK);
        if threads < 2 {
            return (Vec::new(), Vec::new());
        }
        let labels: Vec<&Label> = labels.iter().collect();
        let (ws, packages, known) = (self.ws, &self.packages, &self.listings.known);
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut loader = Loader {
                            ws,
                            interp: None,
                            packages: packages.clone(),
                            listings: Listings {
                                known: known.clone(),
                                ..Listings::default()
                            },
                            logs: Vec::new(),
                        };
                        let mut out: Vec<(usize, Vec<Resolved>)> = Vec::new();
                        loop {
                            let start = next.fetch_add(CHUNK, std::sync::atomic::Ordering::Relaxed);
                            let Some(chunk) = labels.get(start..labels.len().min(start + CHUNK))
                            else {
                                break;
                            };
                            let mut run = Vec::with_capacity(chunk.len());
                            for &label in chunk {
                                if let Ok(done) = loader.resolve_target(label) {
                                    run.push((label.clone(), done));
                                }
                            }
                            out.push((start, run));
                        }
                        (out, loader.listings.log)
                    })
                })
                .collect();
            let mut runs = Vec::new();
            let mut logs = Vec::new();
            for w in workers {
                let (resolved, asked) = w.join().unwrap_or_default();
                runs.extend(resolved);
                logs.push(asked);
            }
            runs.sort_unstable_by_key(|(start, _)| *start);
            (runs.into_iter().map(|(_, run)| run).collect(), logs)
        })
    }
}

/// Indexes a package's targets and checks its declared outputs.
fn check_package(
    ws: &Workspace,
    listings: &mut Listings,
    package: &str,
    raws: Vec<RawTarget>,
    globs: Vec<GlobRead>,
) -> Result<Package, GraphError> {
    // Sorted, then built at once (inserting them one by one searched the tree for each).
    // Names are distinct: evaluation refuses a repeated one.
    let mut named: Vec<(String, Arc<RawTarget>)> = raws
        .into_iter()
        .map(|raw| (raw.label.name.clone(), Arc::new(raw)))
        .collect();
    named.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let targets: BTreeMap<String, Arc<RawTarget>> = named.into_iter().collect();
    let mut outputs: FxHashMap<String, Arc<RawTarget>> = FxHashMap::default();
    for raw in targets.values() {
        let outs = raw.rule.outputs(&raw.label.name);
        let label = raw.label.clone();
        for out in &outs {
            let collision = |other: String| GraphError::OutputCollision {
                location: raw.location.clone(),
                label: label.clone(),
                output: join(package, out),
                other: other.into(),
            };
            // (A cc_binary's program is named like the target itself, as in Bazel.)
            if let Some(t) = targets.get(out)
                && t.label.name != raw.label.name
            {
                return Err(collision(format!(
                    "the target //{package}:{out} defined at {}",
                    t.location
                )));
            }
            if let Some(other) = outputs.get(out) {
                return Err(collision(format!(
                    "an output of //{package}:{} (defined at {})",
                    other.label.name, other.location
                )));
            }
            if let Some(sub) = crossed_subpackage(&ws.root, package, out) {
                return Err(GraphError::Attribute {
                    location: raw.location.clone(),
                    target: label.to_string(),
                    message: format!(
                        "attribute 'outs': output '{out}' would be inside package '{sub}'; \
                             an output must belong to the package of its target"
                    ),
                });
            }
            let path = join(package, out);
            if listings.exists_no_follow(&ws.root, &path) {
                return Err(collision(format!("the source file '{path}'")));
            }
            outputs.insert(out.clone(), raw.clone());
        }
    }
    Ok(Package {
        targets,
        outputs,
        globs,
    })
}

impl Loader<'_> {
    /// The loaded packages, by name.
    fn packages_in_order(&self) -> impl Iterator<Item = &Package> {
        let mut names: Vec<&String> = self.packages.keys().collect();
        names.sort_unstable();
        names.into_iter().map(|n| &*self.packages[n])
    }

    /// Every target of the loaded packages, in label order, into `targets` (and their
    /// `glob()` calls into `globs`): `take(package, name)` gives one already resolved (it is
    /// asked in label order), any other is resolved without loading more packages.
    fn other_targets(
        &self,
        targets: &mut Vec<(Label, Target)>,
        globs: &mut Vec<GlobRead>,
        mut take: impl FnMut(&Label) -> Option<(Label, Target)>,
    ) {
        for pkg in self.packages_in_order() {
            globs.extend(pkg.globs.iter().cloned());
            for raw in pkg.targets.values() {
                targets.push(match take(&raw.label) {
                    Some(done) => done,
                    None => {
                        let label = raw.label.clone();
                        let target = self.resolve_lenient(&label, raw);
                        (label, target)
                    }
                });
            }
        }
    }

    /// The sorted labels matched by `patterns`.
    fn match_patterns(
        &mut self,
        patterns: &[TargetPattern],
    ) -> Result<BTreeSet<Label>, GraphError> {
        // Collected, then sorted at once (inserting 100,000 labels one by one compared strings).
        let mut matched = Vec::new();
        let cmdline = || " (named on the command line)".to_owned();
        for pattern in patterns {
            match pattern {
                TargetPattern::Label(l) => {
                    let root = self.ws.root.clone();
                    let pkg = self.package(&l.package, &cmdline)?;
                    if let Some(raw) = pkg.targets.get(&l.name) {
                        matched.push(raw.label.clone());
                    } else if let Some(producer) = pkg.outputs.get(&l.name) {
                        matched.push(producer.label.clone());
                    } else if matches!(l.name.as_str(), "all" | "*" | "all-targets") {
                        // Bazel: `//pkg:all` is every target of the package, unless a
                        // target has that name.
                        matched.extend(pkg.targets.values().map(|raw| raw.label.clone()));
                    } else if root.join(l.path()).exists() {
                        return Err(GraphError::NotATarget {
                            label: l.clone(),
                            context: cmdline(),
                        });
                    } else {
                        return Err(GraphError::NoSuchTarget {
                            label: l.clone(),
                            context: cmdline(),
                        });
                    }
                }
                TargetPattern::Recursive(prefix) => {
                    let (packages, listed) = find_packages(&self.ws.root, prefix);
                    // No loader on another thread holds them between two patterns.
                    Arc::make_mut(&mut self.listings.known).extend(listed);
                    self.prefetch(&packages);
                    if packages.is_empty() {
                        return Err(GraphError::NoMatch {
                            pattern: pattern.to_string(),
                            dir: if prefix.is_empty() {
                                ".".into()
                            } else {
                                prefix.clone()
                            },
                        });
                    }
                    for p in packages {
                        let pkg = self.package(&p, &cmdline)?;
                        matched.extend(pkg.targets.values().map(|raw| raw.label.clone()));
                    }
                }
            }
        }
        Ok(matched.into_iter().collect())
    }

    /// Resolves one reference written in `from`'s rule call. Returns the dependency and the
    /// target it makes `from` depend on (the target itself, or the producer of an output).
    fn resolve(
        &mut self,
        reference: &str,
        from: &Label,
        location: &Location,
        attribute: &str,
    ) -> Result<(Dep, Option<Label>), GraphError> {
        let attr_err = |message: String| GraphError::Attribute {
            location: location.clone(),
            target: from.to_string(),
            message: format!("attribute '{attribute}': {message}"),
        };
        if let Some(rest) = reference.strip_prefix('@') {
            let files = self.resolve_external(rest).map_err(attr_err)?;
            return match files.as_slice() {
                [(f, false)] => Ok((Dep::File(f.clone()), None)),
                _ => Err(attr_err(format!(
                    "'{reference}' is a directory of the toolchain; name one file here"
                ))),
            };
        }
        // As parts: a target or an output found is named by its own label, shared, and no
        // other is made for the reference.
        let (package, name) =
            Label::parse_parts(reference, &from.package).map_err(|e| attr_err(e.to_string()))?;
        let explicit = reference.starts_with(':') || reference.starts_with("//");
        let context = || format!(" (referenced by {from} at {location})");
        let ws = self.ws;
        let root = &ws.root;
        let pkg = self.package(package, &context)?;
        let path = join(package, name);
        if let Some(shared) = pkg.targets.get(name).map(|raw| raw.label.clone()) {
            if self.listings.find(root, &path) == Found::File {
                return Err(attr_err(format!(
                    "'{reference}' is ambiguous: it names both the target {shared} and the source \
                     file '{path}'; rename the target"
                )));
            }
            return Ok((Dep::Target(shared.clone()), Some(shared)));
        }
        if let Some(producer) = pkg.outputs.get(name) {
            let producer = producer.label.clone();
            return Ok((Dep::File(path), Some(producer)));
        }
        if let Some(sub) = crossed_subpackage(root, package, name) {
            return Err(attr_err(format!(
                "'{reference}' is inside package '{sub}'; write '//{sub}:{}'",
                &path[sub.len() + 1..]
            )));
        }
        match self.listings.find(root, &path) {
            Found::Dir => Err(attr_err(format!(
                "'{path}' is a directory; list its files, or use glob([\"{}/**\"])",
                name
            ))),
            Found::File | Found::Special => Ok((Dep::File(path), None)),
            Found::Missing if explicit => Err(GraphError::NoSuchTarget {
                label: Label::new(package, name),
                context: context(),
            }),
            Found::Missing => Err(GraphError::NoSuchFile {
                file: name.to_owned(),
                package: package.to_owned(),
                location: location.clone(),
            }),
        }
    }

    /// Resolves `name//path` (a file or directory of the pinned toolchain `name`) or
    /// `name//:entry` (an entry point) to workspace paths under `.wbuild/toolchains/name/`;
    /// each is marked `true` when it came from a directory.
    fn resolve_external(&self, rest: &str) -> Result<Vec<(String, bool)>, String> {
        let Some((name, path)) = rest.split_once("//") else {
            return Err(format!(
                "'@{rest}': write @toolchain//path/in/bundle or @toolchain//:entry_point"
            ));
        };
        let Some(ext) = self.ws.externals.get(name) else {
            let pinned: Vec<&str> = self
                .ws
                .config
                .toolchains
                .keys()
                .map(String::as_str)
                .collect();
            return Err(format!(
                "'@{rest}': no toolchain '{name}' is pinned; add [toolchains.{name}] with its \
                 source and digest to wbuild.toml (pinned: {})",
                if pinned.is_empty() {
                    "none".to_owned()
                } else {
                    pinned.join(", ")
                }
            ));
        };
        let ws_path = |p: &str| format!("{}{name}/{p}", crate::workspace::EXTERNAL_PREFIX);
        if let Some(entry) = path.strip_prefix(':') {
            return match ext.entry_points.get(entry) {
                Some(p) => Ok(vec![(ws_path(p), false)]),
                None => Err(format!(
                    "'@{rest}': toolchain '{name}' ({}) has no entry point '{entry}' (it has: {})",
                    ext.digest,
                    ext.entry_points
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            };
        }
        let path = path.trim_end_matches('/');
        if ext.files.contains(path) {
            return Ok(vec![(ws_path(path), false)]);
        }
        let prefix = format!("{path}/");
        let under: Vec<(String, bool)> = ext
            .files
            .range(prefix.clone()..)
            .take_while(|f| f.starts_with(&prefix))
            .map(|f| (ws_path(f), true))
            .collect();
        if under.is_empty() {
            return Err(format!(
                "'@{rest}': toolchain '{name}' ({}) has no file or directory '{path}'",
                ext.digest
            ));
        }
        Ok(under)
    }

    fn resolve_all(
        &mut self,
        refs: &[String],
        from: &Label,
        location: &Location,
        attribute: &str,
        edges: &mut Vec<Label>,
    ) -> Result<Vec<Dep>, GraphError> {
        let mut deps = Vec::with_capacity(refs.len());
        for r in refs {
            if let Some(rest) = r.strip_prefix('@') {
                // A directory of a toolchain stands for every file under it.
                let files =
                    self.resolve_external(rest)
                        .map_err(|message| GraphError::Attribute {
                            location: location.clone(),
                            target: from.to_string(),
                            message: format!("attribute '{attribute}': {message}"),
                        })?;
                deps.extend(files.into_iter().map(|(f, _)| Dep::File(f)));
                continue;
            }
            let (dep, edge) = self.resolve(r, from, location, attribute)?;
            edges.extend(edge);
            deps.push(dep);
        }
        Ok(deps)
    }

    /// Resolves every reference of a needed target; returns it and the targets it depends on.
    fn resolve_target(&mut self, label: &Label) -> Result<Target, GraphError> {
        let raw = self.packages[&label.package]
            .targets
            .get(&label.name)
            .cloned()
            .ok_or_else(|| GraphError::NoSuchTarget {
                label: label.clone(),
                context: String::new(),
            })?;
        let mut strict = Strict {
            loader: self,
            from: label,
            location: &raw.location,
            edges: Vec::new(),
        };
        let rule = raw.rule.map(&mut strict)?;
        let mut edges = strict.edges;
        edges.sort();
        edges.dedup();
        let target = Target {
            label: label.clone(),
            location: raw.location.clone(),
            rule,
            platform: raw.platform.clone(),
            deps: Some(edges.into_boxed_slice()),
        };
        Ok(target)
    }

    /// Best-effort resolution for a target no requested target needs: no packages are loaded
    /// and nothing is checked.
    fn resolve_lenient(&self, label: &Label, raw: &RawTarget) -> Target {
        let Ok(rule) = raw.rule.map(&mut Lenient {
            loader: self,
            from: label,
        });
        Target {
            label: label.clone(),
            location: raw.location.clone(),
            rule,
            platform: raw.platform.clone(),
            deps: None,
        }
    }
}

/// Resolves the references of a needed target, checking each (loading the packages they
/// name) and noting the targets it depends on.
struct Strict<'l, 'w> {
    loader: &'l mut Loader<'w>,
    from: &'l Label,
    location: &'l Location,
    edges: Vec<Label>,
}

impl MapRefs<String, String> for Strict<'_, '_> {
    type Dep = Dep;
    type Label = Label;
    type Error = GraphError;

    fn files(&mut self, attribute: &str, refs: &[String]) -> Result<Vec<Dep>, GraphError> {
        self.loader
            .resolve_all(refs, self.from, self.location, attribute, &mut self.edges)
    }

    fn target(&mut self, attribute: &str, r: &String, want: &Want) -> Result<Label, GraphError> {
        let (dep, _) = self
            .loader
            .resolve(r, self.from, self.location, attribute)?;
        let what = match &dep {
            Dep::Target(l) => {
                let rule = &self.loader.packages[&l.package].targets[&l.name].rule;
                if (want.accepts)(rule) {
                    self.edges.push(l.clone());
                    return Ok(l.clone());
                }
                rule.described()
            }
            Dep::File(_) => "a file",
        };
        Err(GraphError::Attribute {
            location: self.location.clone(),
            target: self.from.to_string(),
            message: format!("attribute '{attribute}': {}", (want.refuse)(r, what)),
        })
    }
}

/// Resolves the references of a target nothing needs as well as the packages already loaded
/// allow; checks nothing.
struct Lenient<'l, 'w> {
    loader: &'l Loader<'w>,
    from: &'l Label,
}

impl MapRefs<String, String> for Lenient<'_, '_> {
    type Dep = Dep;
    type Label = Label;
    type Error = std::convert::Infallible;

    fn files(&mut self, _attribute: &str, refs: &[String]) -> Result<Vec<Dep>, Self::Error> {
        Ok(refs.iter().map(|r| self.dep(r)).collect())
    }

    fn target(&mut self, _attribute: &str, r: &String, _want: &Want) -> Result<Label, Self::Error> {
        Ok(Label::parse(r, &self.from.package)
            .unwrap_or_else(|_| Label::new(self.from.package.clone(), r.clone())))
    }
}

impl Lenient<'_, '_> {
    fn dep(&self, r: &str) -> Dep {
        let package = &self.from.package;
        if let Some(rest) = r.strip_prefix('@')
            && let Ok(files) = self.loader.resolve_external(rest)
            && let Some((f, _)) = files.into_iter().next()
        {
            return Dep::File(f);
        }
        let Ok(l) = Label::parse(r, package) else {
            return Dep::File(join(package, r));
        };
        match self.loader.packages.get(&l.package) {
            Some(p) if let Some(raw) = p.targets.get(&l.name) => Dep::Target(raw.label.clone()),
            Some(_) => Dep::File(l.path()),
            None if r.starts_with("//") || r.starts_with(':') => Dep::Target(l),
            None => Dep::File(l.path()),
        }
    }
}

/// If the target `name` of `package` names a file below a sub-package of its package
/// (`//a:sub/x` with `a/sub/WBUILD`), returns the deepest such sub-package.
pub(crate) fn crossed_subpackage(root: &Path, package: &str, name: &str) -> Option<String> {
    if !name.contains('/') {
        return None;
    }
    let parts: Vec<&str> = name.split('/').collect();
    let mut found = None;
    let mut dir = package.to_owned();
    for part in &parts[..parts.len() - 1] {
        dir = join(&dir, part);
        if root.join(&dir).join(BUILD_FILE).is_file() {
            found = Some(dir.clone());
        }
    }
    found
}

/// Packages (workspace paths, sorted) at or below `prefix`, skipping hidden directories,
/// `target/` and `wbuild-out/`, not following symlinks; with the listing of every directory
/// walked, as [`Listings::read`] makes it (the loader's questions about paths in those
/// directories are answered from them instead of listing each again on every thread).
fn find_packages(root: &Path, prefix: &str) -> (Vec<String>, Listed) {
    find_packages_sharing(root, prefix, 64)
}

/// [`find_packages`], walked on one thread until `waiting` directories are waiting, then on a
/// thread per core.
fn find_packages_sharing(root: &Path, prefix: &str, waiting: usize) -> (Vec<String>, Listed) {
    /// Walks `dir`: its listing into `listed`, itself into `found` if it is a package, its
    /// subdirectories onto `stack`.
    fn walk(
        root: &Path,
        dir: String,
        stack: &mut Vec<String>,
        found: &mut Vec<String>,
        listed: &mut Listed,
    ) {
        let host = if dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&dir)
        };
        // `None` if the directory cannot be listed, or once an entry cannot be read or named
        // (as `Listings::read` gives up); the walk goes on into the subdirectories it can name.
        let mut listing = None;
        if let Ok(entries) = std::fs::read_dir(&host) {
            let mut l = Some(FxHashMap::default());
            for entry in entries {
                let named = entry
                    .ok()
                    .and_then(|e| Some((e.file_name().into_string().ok()?, Kind::of(&e))));
                let Some((name, kind)) = named else {
                    l = None;
                    continue;
                };
                if kind == Kind::Dir && !skip_dir(&name) {
                    stack.push(join(&dir, &name));
                }
                if let Some(l) = l.as_mut() {
                    l.insert(name, kind);
                }
            }
            listing = l;
        }
        // A regular file is one; a symbolic link (or anything else) is asked about.
        let package = match listing.as_ref().map(|l| l.get(BUILD_FILE)) {
            Some(Some(Kind::File)) => true,
            Some(Some(Kind::Dir) | None) => false,
            Some(Some(Kind::Other)) | None => host.join(BUILD_FILE).is_file(),
        };
        if package {
            found.push(dir.clone());
        }
        listed.insert(dir, listing);
    }
    // Walked here until many directories are waiting (a small tree, or any on one core, is
    // walked here alone), then those are shared by a thread per core, each walking the trees
    // below the ones it takes.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let waiting = if threads < 2 { usize::MAX } else { waiting };
    let mut found = Vec::new();
    let mut listed = Listed::default();
    let mut stack = vec![prefix.to_owned()];
    while stack.len() < waiting
        && let Some(dir) = stack.pop()
    {
        walk(root, dir, &mut stack, &mut found, &mut listed);
    }
    if !stack.is_empty() {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let waiting = &stack;
        let walked: Vec<_> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let (mut found, mut listed) = (Vec::new(), Listed::default());
                        let mut below = Vec::new();
                        while let Some(dir) =
                            waiting.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                        {
                            below.push(dir.clone());
                            while let Some(dir) = below.pop() {
                                walk(root, dir, &mut below, &mut found, &mut listed);
                            }
                        }
                        (found, listed)
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join()).collect()
        });
        for w in walked {
            let (f, l) = w.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            found.extend(f);
            listed.extend(l);
        }
    }
    found.sort();
    (found, listed)
}

/// Depth-first search for a cycle reachable from `roots`; `edges(l)` gives the targets a
/// target depends on, `location(l)` where it is declared. Reports the whole cycle, from its
/// first target back to it.
pub(crate) fn find_cycle<'e, I, F, L>(roots: I, edges: F, location: L) -> Result<(), GraphError>
where
    I: IntoIterator<Item = &'e Label>,
    F: Fn(&Label) -> Option<&'e [Label]>,
    L: Fn(&Label) -> Option<Location>,
{
    match search(roots, |l| Some(edges(l).unwrap_or_default()), location) {
        Search::Acyclic | Search::Open => Ok(()),
        Search::Cycle(e) => Err(e),
    }
}

/// If every target `roots` need has its dependencies in `edges` ([`closed`]), what
/// [`find_cycle`] says of them; `None` if one has none. One search does both (the
/// 100,000-target graph: about 40 ms fewer than two); a cycle is rare, and then whether the
/// rest is closed is checked apart.
fn search_closure<'e, F, L>(
    roots: &'e BTreeSet<Label>,
    edges: F,
    location: L,
) -> Option<Result<(), GraphError>>
where
    F: Fn(&Label) -> Option<&'e [Label]>,
    L: Fn(&Label) -> Option<Location>,
{
    match search(roots, &edges, location) {
        Search::Acyclic => Some(Ok(())),
        Search::Open => None,
        Search::Cycle(e) => closed(roots, &edges).then_some(Err(e)),
    }
}

/// What [`search`] found.
enum Search {
    /// Every target reached has its dependencies, and no cycle.
    Acyclic,
    /// The first cycle reached.
    Cycle(GraphError),
    /// A target reached (before any cycle) whose dependencies are unknown.
    Open,
}

/// A depth-first search from `roots` (in their order, each target's dependencies in theirs)
/// for the first cycle, stopping at a target `edges` knows nothing of.
fn search<'e, I, F, L>(roots: I, edges: F, location: L) -> Search
where
    I: IntoIterator<Item = &'e Label>,
    F: Fn(&Label) -> Option<&'e [Label]>,
    L: Fn(&Label) -> Option<Location>,
{
    #[derive(PartialEq)]
    enum State {
        Active,
        Done,
    }
    // Hashed, by borrowed labels: a B-tree of labels compared strings at every level, and a
    // copy of every label was most of the search (100,000 targets).
    let mut state: FxHashMap<&'e Label, State> = FxHashMap::default();
    for root in roots {
        if state.contains_key(root) {
            continue;
        }
        // Iterative DFS: (label, its edges, next edge index).
        let mut path: Vec<(&'e Label, &'e [Label], usize)> = Vec::new();
        state.insert(root, State::Active);
        let Some(first) = edges(root) else {
            return Search::Open;
        };
        path.push((root, first, 0));
        while let Some((_, succ, i)) = path.last_mut() {
            if *i == succ.len() {
                let (l, _, _) = path.pop().expect("non-empty");
                state.insert(l, State::Done);
                continue;
            }
            let next: &'e Label = &succ[*i];
            *i += 1;
            match state.get(next) {
                Some(State::Done) => {}
                Some(State::Active) => {
                    let start = path
                        .iter()
                        .position(|(l, _, _)| *l == next)
                        .expect("active node is on the path");
                    let mut cycle: Vec<Label> =
                        path[start..].iter().map(|(l, _, _)| (*l).clone()).collect();
                    cycle.push(next.clone());
                    let location = location(next).unwrap_or_else(|| Location {
                        file: join(&next.package, BUILD_FILE).into(),
                        line: 1,
                        column: 1,
                    });
                    return Search::Cycle(GraphError::Cycle { location, cycle });
                }
                None => {
                    state.insert(next, State::Active);
                    let Some(succ) = edges(next) else {
                        return Search::Open;
                    };
                    path.push((next, succ, 0));
                }
            }
        }
    }
    Search::Acyclic
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::{FilegroupAttrs, Rule, WasiRunAttrs, WasiToolAttrs};

    fn load_err(files: &[(&str, &str)], pats: &[&str]) -> GraphError {
        let t = workspace(files);
        match load(&t.ws, &patterns(pats)) {
            Ok((g, _)) => panic!("expected an error, loaded {:?}", g.targets.keys()),
            Err(e) => e,
        }
    }

    const TOOL: (&str, &str) = (
        "tools/WBUILD",
        "wasi_tool(name = 'gen', src = 'gen.wasm')\n",
    );
    const TOOL_WASM: (&str, &str) = ("tools/gen.wasm", "not really wasm");

    #[test]
    fn platform_attributes_take_every_name_of_a_platform_and_record_the_canonical_one() {
        let t = workspace(&[(
            "app/WBUILD",
            "genrule(name = 'a', outs = ['a'], cmd = 'true', platform = 'linux-aarch64')\n\
             genrule(name = 'b', outs = ['b'], cmd = 'true', platform = 'linux-x86_64')\n",
        )]);
        let (g, _) = load(&t.ws, &patterns(&["//app:all"])).unwrap();
        assert_eq!(
            g.targets[&label("//app:a")].platform.as_deref(),
            Some("linux-arm64")
        );
        assert_eq!(
            g.targets[&label("//app:b")].platform.as_deref(),
            Some("linux-x86_64")
        );
        let e = load_err(
            &[(
                "app/WBUILD",
                "genrule(name = 'a', outs = ['a'], cmd = 'true', platform = 'mips')\n",
            )],
            &["//app:all"],
        );
        assert!(
            e.to_string()
                .contains("unknown platform \"mips\": use one of linux-x86_64, linux-arm64"),
            "{e}"
        );
    }

    /// A target's label is one allocation shared by the target, the graph's index and every
    /// reference to it, on the path that resolves in order (a few targets) and on the one that
    /// resolves ahead on other threads (1,600 targets).
    #[test]
    fn a_label_is_shared_by_its_target_the_index_and_every_reference() {
        for n in [3, 800] {
            let mut files = vec![TOOL, TOOL_WASM];
            let builds: Vec<String> = (0..2)
                .map(|p| {
                    (0..n)
                        .map(|i| {
                            let srcs = if i == 0 { String::new() } else { format!("'//p{p}:r0'") };
                            format!(
                                "wasi_run(name = 'r{i}', tool = '//tools:gen', srcs = [{srcs}], outs = ['r{i}.txt'])\n"
                            )
                        })
                        .collect()
                })
                .collect();
            let paths = ["p0/WBUILD", "p1/WBUILD"];
            for (path, text) in paths.iter().zip(&builds) {
                files.push((path, text.as_str()));
            }
            let t = workspace(&files);
            let (g, _) = load(&t.ws, &patterns(&["//..."])).unwrap();
            assert_eq!(g.targets.len(), 2 * n + 1);
            let (tool, _) = g.targets.get_key_value(&label("//tools:gen")).unwrap();
            for (key, target) in &g.targets {
                assert!(key.shares(&target.label), "{key}: the index holds a copy");
                let Rule::WasiRun(run) = &target.rule else {
                    continue;
                };
                assert!(run.tool.shares(tool), "{key}: its tool label is a copy");
                let (first, _) = g
                    .targets
                    .get_key_value(&label(&format!("//{}:r0", key.package)))
                    .unwrap();
                for dep in &run.srcs {
                    let Dep::Target(l) = dep else {
                        panic!("{key}: {dep:?} is not a target")
                    };
                    assert!(l.shares(first), "{key}: its reference to {l} is a copy");
                }
            }
        }
    }

    #[test]
    fn loads_rules_with_locations() {
        let t = workspace(&[
            TOOL,
            TOOL_WASM,
            (
                "app/WBUILD",
                "# comment\n\
                 filegroup(\n    name = 'templates',\n    srcs = glob(['tmpl/**/*.t']),\n)\n\
                 wasi_run(\n    name = 'out',\n    tool = '//tools:gen',\n    srcs = [':templates', 'main.c', 'x.h'],\n    outs = ['out.txt'],\n    args = ['-o', '$@'],\n    env = {'A': 'b'},\n)\n\
                 wasi_run(name = 'x', tool = '//tools:gen', outs = ['x.h'])\n\
                 wasi_test(name = 't', tool = '//tools:gen', srcs = [':out'])\n",
            ),
            ("app/main.c", ""),
            ("app/tmpl/a.t", ""),
            ("app/tmpl/sub/b.t", ""),
            ("app/tmpl/c.other", ""),
        ]);
        let (g, matched) = load(&t.ws, &patterns(&["//app:out"])).unwrap();
        assert_eq!(matched, vec![label("//app:out")]);
        let out = &g.targets[&label("//app:out")];
        assert_eq!(out.location.to_string(), "app/WBUILD:6:1");
        assert_eq!(
            out.rule,
            Rule::WasiRun(WasiRunAttrs {
                tool: label("//tools:gen"),
                srcs: vec![
                    Dep::Target(label("//app:templates")),
                    Dep::File("app/main.c".into()),
                    Dep::File("app/x.h".into()),
                ],
                outs: vec!["out.txt".into()],
                args: vec!["-o".into(), "$@".into()],
                env: [("A".to_string(), "b".to_string())].into(),
            })
        );
        assert_eq!(
            g.targets[&label("//app:templates")].rule,
            Rule::Filegroup(FilegroupAttrs {
                srcs: vec![
                    Dep::File("app/tmpl/a.t".into()),
                    Dep::File("app/tmpl/sub/b.t".into()),
                ]
            })
        );
        assert_eq!(
            g.targets[&label("//tools:gen")].rule,
            Rule::WasiTool(WasiToolAttrs {
                src: Dep::File("tools/gen.wasm".into()),
                data: vec![],
                data_dir: None,
                argv0: None
            })
        );
        // Every target of a loaded package is present, needed or not.
        assert!(g.targets.contains_key(&label("//app:t")));
        assert_eq!(
            g.targets[&label("//app:t")].location.to_string(),
            "app/WBUILD:15:1"
        );
        // An output file label stands for its producer.
        let (_, matched) = load(&t.ws, &patterns(&["//app:x.h", "//app:t"])).unwrap();
        assert_eq!(matched, vec![label("//app:t"), label("//app:x")]);
    }

    #[test]
    fn glob_stops_at_subpackages_and_out_dirs() {
        let t = workspace(&[
            ("WBUILD", "filegroup(name = 'all', srcs = glob(['**']))\n"),
            ("a.txt", ""),
            ("dir/b.txt", ""),
            ("sub/WBUILD", ""),
            ("sub/c.txt", ""),
            ("wbuild-out/gen.txt", ""),
            ("target/debug/x", ""),
            (".git/HEAD", ""),
        ]);
        let (g, _) = load(&t.ws, &patterns(&["//:all"])).unwrap();
        let Rule::Filegroup(FilegroupAttrs { srcs }) = &g.targets[&label("//:all")].rule else {
            panic!()
        };
        assert_eq!(
            srcs,
            &vec![
                Dep::File("WBUILD".into()),
                Dep::File("a.txt".into()),
                Dep::File("dir/b.txt".into()),
                Dep::File("wbuild.toml".into()),
            ]
        );
    }

    #[test]
    fn glob_exclude_and_allow_empty() {
        let t = workspace(&[
            (
                "p/WBUILD",
                "filegroup(name = 'g', srcs = glob(['*.c', '*.h'], exclude = ['skip*']))\n\
                 filegroup(name = 'e', srcs = glob(['*.none']))\n",
            ),
            ("p/a.c", ""),
            ("p/b.h", ""),
            ("p/skip.c", ""),
        ]);
        let (g, _) = load(&t.ws, &patterns(&["//p/..."])).unwrap();
        assert_eq!(
            g.targets[&label("//p:g")].rule,
            Rule::Filegroup(FilegroupAttrs {
                srcs: vec![Dep::File("p/a.c".into()), Dep::File("p/b.h".into())]
            })
        );
        assert_eq!(
            g.targets[&label("//p:e")].rule,
            Rule::Filegroup(FilegroupAttrs { srcs: vec![] })
        );
        let err = load_err(
            &[(
                "p/WBUILD",
                "filegroup(name = 'e', srcs = glob(['*.none'], allow_empty = False))\n",
            )],
            &["//p:e"],
        );
        assert!(err.to_string().contains("p/WBUILD:1:"), "{err}");
        assert!(err.to_string().contains("*.none"), "{err}");
    }

    #[test]
    fn load_bzl_macro() {
        let t = workspace(&[
            ("defs/WBUILD", ""),
            (
                "defs/macros.bzl",
                "load(':consts.bzl', 'SUFFIX')\n\
                 def my_group(name, files):\n    filegroup(name = name + SUFFIX, srcs = files + [package_name() + '.txt'])\n",
            ),
            ("defs/consts.bzl", "SUFFIX = '_group'\n"),
            (
                "p/WBUILD",
                "load('//defs:macros.bzl', 'my_group')\n\n\n  \nmy_group(\n  name = 'g',\n  files = ['a.txt'],\n)\n",
            ),
            ("p/a.txt", ""),
            ("p/p.txt", ""),
        ]);
        let (g, matched) = load(&t.ws, &patterns(&["//p:g_group"])).unwrap();
        assert_eq!(matched, vec![label("//p:g_group")]);
        let tg = &g.targets[&label("//p:g_group")];
        // Attributed to the macro call in the WBUILD file, not the rule call in the .bzl.
        assert_eq!(tg.location.to_string(), "p/WBUILD:5:1");
        assert_eq!(
            tg.rule,
            Rule::Filegroup(FilegroupAttrs {
                srcs: vec![Dep::File("p/a.txt".into()), Dep::File("p/p.txt".into())]
            })
        );
    }

    #[test]
    fn load_errors() {
        let err = load_err(
            &[("p/WBUILD", "load('//p:missing.bzl', 'x')\n")],
            &["//p/..."],
        );
        assert!(matches!(err, GraphError::Load { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("p/WBUILD:1:6: cannot load '//p:missing.bzl'"),
            "{err}"
        );
        let err = load_err(
            &[
                ("p/WBUILD", "load(':a.bzl', 'x')\n"),
                ("p/a.bzl", "load(':b.bzl', 'y')\nx = 1\n"),
                ("p/b.bzl", "load(':a.bzl', 'x')\ny = 1\n"),
            ],
            &["//p/..."],
        );
        assert!(
            err.to_string().contains("p/a.bzl -> p/b.bzl -> p/a.bzl"),
            "{err}"
        );
        let err = load_err(
            &[
                ("p/WBUILD", "load(':a.bzl', 'x')\n"),
                ("p/a.bzl", "filegroup(name = 'x')\nx = 1\n"),
            ],
            &["//p/..."],
        );
        assert!(err.to_string().contains("p/a.bzl:1:1"), "{err}");
        assert!(err.to_string().contains("top level of a .bzl"), "{err}");
    }

    /// The package walk shared by threads finds what the walk on one thread finds, with the
    /// same listings: nested packages, directories without a build file, skipped directories,
    /// a build file that is a symbolic link and a directory named like a build file.
    #[test]
    fn package_walks_on_threads_find_what_one_walk_finds() {
        let mut files: Vec<(String, String)> = Vec::new();
        for i in 0..40 {
            files.push((format!("d{i}/WBUILD"), String::new()));
            files.push((format!("d{i}/src/x{i}.txt"), String::new()));
            if i % 3 == 0 {
                files.push((format!("d{i}/sub/deeper/WBUILD"), String::new()));
            }
            if i % 5 == 0 {
                files.push((format!("d{i}/.hidden/WBUILD"), String::new()));
                files.push((format!("d{i}/wbuild-out/WBUILD"), String::new()));
            }
            if i % 7 == 0 {
                files.push((format!("e{i}/WBUILD/file"), String::new()));
            }
        }
        let refs = as_strs(&files);
        let t = workspace(&refs);
        std::fs::create_dir_all(t.ws.root.join("linked")).unwrap();
        std::os::unix::fs::symlink("../d0/WBUILD", t.ws.root.join("linked/WBUILD")).unwrap();
        for prefix in ["", "d3"] {
            let alone = find_packages_sharing(&t.ws.root, prefix, usize::MAX);
            assert!(alone.0.len() > 1, "{:?}", alone.0);
            for waiting in [1, 2, 5] {
                let shared = find_packages_sharing(&t.ws.root, prefix, waiting);
                assert_eq!(shared.0, alone.0, "{prefix:?}, {waiting}");
                assert!(shared.1 == alone.1, "listings of {prefix:?}, {waiting}");
            }
        }
        let (found, _) = find_packages(&t.ws.root, "");
        assert!(
            found.contains(&"linked".to_owned()) && found.contains(&"d3/sub/deeper".to_owned())
        );
        assert!(
            !found
                .iter()
                .any(|p| p.contains("hidden") || p.contains("wbuild-out") || p.starts_with('e'))
        );
    }

    /// A reference, an output or a loaded file below a sub-package of its package is refused,
    /// naming the deepest sub-package crossed; one beside a sub-package is not.
    #[test]
    fn paths_into_a_sub_package_are_refused_with_the_package_to_name() {
        let sub = [
            ("p/q/WBUILD", "filegroup(name = 'g')\n"),
            ("p/q/r/WBUILD", "filegroup(name = 'h')\n"),
            ("p/q/r/x.txt", ""),
            ("p/q/r/defs.bzl", "x = 1\n"),
            ("p/other/x.txt", ""),
        ];
        let with = |build: &'static str| {
            let mut files = sub.to_vec();
            files.push(("p/WBUILD", build));
            files
        };
        for (build, pattern, message) in [
            (
                "filegroup(name = 'f', srcs = ['q/r/x.txt'])\n",
                "//p:f",
                "'q/r/x.txt' is inside package 'p/q/r'; write '//p/q/r:x.txt'",
            ),
            (
                "genrule(name = 'f', outs = ['q/o.txt'], cmd = 'true')\n",
                "//p:f",
                "output 'q/o.txt' would be inside package 'p/q'",
            ),
            (
                "load(':q/r/defs.bzl', 'x')\n",
                "//p:all",
                "'q/r/defs.bzl' is inside package 'p/q/r'; write '//p/q/r:defs.bzl'",
            ),
        ] {
            let err = load_err(&with(build), &[pattern]);
            assert!(err.to_string().contains(message), "{err}");
        }
        let t = workspace(&with(
            "filegroup(name = 'f', srcs = ['other/x.txt'])\n\
             genrule(name = 'o', outs = ['other/o.txt'], cmd = 'true')\n",
        ));
        load(&t.ws, &patterns(&["//p:all"])).unwrap();
    }

    #[test]
    fn recursive_patterns() {
        let t = workspace(&[
            ("WBUILD", "filegroup(name = 'root')\n"),
            (
                "a/WBUILD",
                "filegroup(name = 'a1')\nfilegroup(name = 'a2')\n",
            ),
            ("a/b/WBUILD", "filegroup(name = 'b')\n"),
            ("a/plain/c/WBUILD", "filegroup(name = 'c')\n"),
            ("wbuild-out/a/WBUILD", "filegroup(name = 'bad')\n"),
            ("target/WBUILD", "filegroup(name = 'bad')\n"),
            (".hidden/WBUILD", "filegroup(name = 'bad')\n"),
        ]);
        let (_, all) = load(&t.ws, &patterns(&["//..."])).unwrap();
        let names: Vec<String> = all.iter().map(|l| l.to_string()).collect();
        assert_eq!(
            names,
            ["//:root", "//a:a1", "//a:a2", "//a/b:b", "//a/plain/c:c"]
        );
        let (_, some) = load(&t.ws, &patterns(&["//a/b/...", "//a:a1"])).unwrap();
        assert_eq!(some, vec![label("//a:a1"), label("//a/b:b")]);
        let (_, pkg) = load(&t.ws, &patterns(&["//a:all"])).unwrap();
        assert_eq!(pkg, vec![label("//a:a1"), label("//a:a2")]);
        let err = load_err(&[("WBUILD", "")], &["//nothing/..."]);
        assert!(matches!(err, GraphError::NoMatch { .. }), "{err:?}");
    }

    #[test]
    fn packages_evaluated_on_several_threads_report_the_first_error_in_order() {
        // Many packages, two broken: whichever thread meets them first, the error is the one
        // of the first package in order, as when they were evaluated one after the other.
        let mut files: Vec<(String, String)> = (0..40)
            .map(|i| {
                (
                    format!("p{i:02}/WBUILD"),
                    format!("filegroup(name = 'f{i}', srcs = ['x.txt'])\n"),
                )
            })
            .chain((0..40).map(|i| (format!("p{i:02}/x.txt"), String::new())))
            .collect();
        files[29].1 = "filegroup(name = \n".into();
        files[13].1 = "filegroup(name = 'f13', srcs = ['missing.txt'])\nundefined_rule()\n".into();
        let refs = as_strs(&files);
        for _ in 0..5 {
            let err = load_err(&refs, &["//..."]);
            let text = err.to_string();
            assert!(
                text.contains("p13/WBUILD:2:1") && !text.contains("p29"),
                "{err}"
            );
        }
        files[13].1 = "filegroup(name = 'f13', srcs = ['x.txt'])\n".into();
        let refs = as_strs(&files);
        let err = load_err(&refs, &["//..."]);
        assert!(err.to_string().contains("p29/WBUILD"), "{err}");
        files[29].1 = "filegroup(name = 'f29', srcs = ['x.txt'])\n".into();
        let refs = as_strs(&files);
        let t = workspace(&refs);
        let (g, all) = load(&t.ws, &patterns(&["//..."])).unwrap();
        assert_eq!(all.len(), 40);
        assert_eq!(g.targets.len(), 40);
    }

    #[test]
    fn targets_resolved_ahead_and_the_other_targets_of_their_packages_merge_in_order() {
        // Four packages of 500 targets: three matched whole, and one target of the fourth,
        // so its other targets are resolved afterwards, between those resolved ahead.
        let mut files: Vec<(String, String)> = Vec::new();
        for p in 0..4 {
            let mut text = String::new();
            for i in 0..500 {
                let dep = if i % 7 == 3 {
                    format!(", ':f{}'", i / 2)
                } else {
                    String::new()
                };
                text.push_str(&format!(
                    "filegroup(name = 'f{i}', srcs = ['x.txt'{dep}])\n"
                ));
            }
            if p % 2 == 1 {
                // Globs, as the packages list them, whichever way their targets were resolved.
                text.push_str("filegroup(name = 'g', srcs = glob(['*.txt']))\n");
            }
            files.push((format!("big/p{p}/WBUILD"), text));
            files.push((format!("big/p{p}/x.txt"), String::new()));
        }
        let refs = as_strs(&files);
        let t = workspace(&refs);
        let some = [
            "//big/p0:all",
            "//big/p1:all",
            "//big/p2:all",
            "//big/p3:f1",
        ];
        let some = load_reading(&t.ws, &patterns(&some)).unwrap();
        assert_eq!(some.matched.len(), 1502);
        let (g, reads) = (some.graph, some.learnt);
        // Every target resolved ahead: the packages go first, the targets are gathered apart.
        let all = load_reading(&t.ws, &patterns(&["//big/..."])).unwrap();
        let (all, all_reads) = (all.graph, all.learnt);
        assert_eq!(g.targets.len(), 2002);
        assert!(
            g.targets == all.targets,
            "the same targets, resolved the same"
        );
        assert_eq!(reads.globs, all_reads.globs);
        let globbed: Vec<&str> = reads.globs.iter().map(|g| g.package.as_str()).collect();
        assert_eq!(globbed, ["big/p1", "big/p3"]);
        assert_eq!(
            g.targets[&label("//big/p3:f3")].rule,
            Rule::Filegroup(FilegroupAttrs {
                srcs: vec![
                    Dep::File("big/p3/x.txt".into()),
                    Dep::Target(label("//big/p3:f1"))
                ]
            })
        );
    }

    #[test]
    fn a_cycle_among_targets_resolved_ahead_is_the_one_found_in_order() {
        // Enough targets to be resolved ahead; `f5 -> f7 -> f5` is a cycle, first reached
        // from `f5`. With everything resolved ahead (one search checks both), and with one
        // target reached before the cycle naming a package the pattern does not load (the
        // targets are then resolved in order first): the same cycle either way.
        let cycle_with = |f3_srcs: &str| {
            let mut files: Vec<(String, String)> = Vec::new();
            let mut text = String::new();
            for i in 0..1500 {
                let srcs = match i {
                    3 => f3_srcs.to_owned(),
                    5 => "':f7'".to_owned(),
                    7 => "':f5', 'x.txt'".to_owned(),
                    _ => "'x.txt'".to_owned(),
                };
                text.push_str(&format!("filegroup(name = 'f{i}', srcs = [{srcs}])\n"));
            }
            files.push(("big/WBUILD".to_owned(), text));
            files.push(("big/x.txt".to_owned(), String::new()));
            files.push((
                "other/WBUILD".into(),
                "filegroup(name = 'o', srcs = ['y.txt'])\n".into(),
            ));
            files.push(("other/y.txt".into(), String::new()));
            let refs = as_strs(&files);
            let t = workspace(&refs);
            load(&t.ws, &patterns(&["//big:all"])).unwrap_err()
        };
        for f3 in ["'x.txt'", "'//other:o'"] {
            let err = cycle_with(f3);
            assert!(matches!(err, GraphError::Cycle { .. }), "{f3}: {err:?}");
            assert!(
                err.to_string()
                    .ends_with("dependency cycle: //big:f5 -> //big:f7 -> //big:f5"),
                "{f3}: {err}"
            );
        }
    }

    #[test]
    fn targets_resolved_on_several_threads_are_those_resolved_in_order() {
        // Enough targets to be resolved ahead on several threads; one refers to a package the
        // pattern does not load (so it is resolved again in order, loading it), one to a
        // target of its own package.
        let mut files: Vec<(String, String)> = Vec::new();
        for p in 0..3 {
            let mut text = String::new();
            for i in 0..500 {
                text.push_str(&format!("filegroup(name = 'f{i}', srcs = ['x.txt'])\n"));
            }
            files.push((format!("big/p{p}/WBUILD"), text));
            files.push((format!("big/p{p}/x.txt"), String::new()));
        }
        files[2].1 = files[2].1.replace(
            "filegroup(name = 'f7', srcs = ['x.txt'])",
            "filegroup(name = 'f7', srcs = ['//other:o', ':f3'])",
        );
        files.push((
            "other/WBUILD".into(),
            "filegroup(name = 'o', srcs = ['y.txt'])\n".into(),
        ));
        files.push(("other/y.txt".into(), String::new()));
        let load_files = |files: &[(String, String)]| {
            let refs = as_strs(files);
            let t = workspace(&refs);
            load(&t.ws, &patterns(&["//big/..."]))
        };
        let (g, matched) = load_files(&files).unwrap();
        assert_eq!(matched.len(), 1500);
        assert_eq!(g.targets.len(), 1501);
        let Rule::Filegroup(FilegroupAttrs { srcs }) = &g.targets[&label("//big/p1:f7")].rule
        else {
            panic!("not a filegroup");
        };
        assert_eq!(
            srcs,
            &[
                Dep::Target(label("//other:o")),
                Dep::Target(label("//big/p1:f3"))
            ]
        );
        assert_eq!(
            g.targets[&label("//big/p2:f499")].rule,
            Rule::Filegroup(FilegroupAttrs {
                srcs: vec![Dep::File("big/p2/x.txt".into())]
            })
        );
        // Two broken targets: the error is the one met first in order, whichever thread
        // resolved them.
        files[4].1 = files[4].1.replace(
            "name = 'f100', srcs = ['x.txt']",
            "name = 'f100', srcs = ['gone2.txt']",
        );
        files[0].1 = files[0].1.replace(
            "name = 'f400', srcs = ['x.txt']",
            "name = 'f400', srcs = ['gone0.txt']",
        );
        for _ in 0..3 {
            let err = load_files(&files).unwrap_err().to_string();
            assert!(
                err.contains("gone0.txt") && err.contains("big/p0/WBUILD:401"),
                "{err}"
            );
        }
    }

    #[test]
    fn listings_answer_as_the_file_system_does() {
        let t = workspace(&[("p/a.txt", "a"), ("p/sub/b.txt", "b"), ("p/WBUILD", "")]);
        let root = &t.ws.root;
        std::os::unix::fs::symlink(root.join("p/a.txt"), root.join("p/to_file")).unwrap();
        std::os::unix::fs::symlink(root.join("p/sub"), root.join("p/to_dir")).unwrap();
        std::os::unix::fs::symlink(root.join("p/nowhere"), root.join("p/dangling")).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(root.join("p/fifo"))
            .status()
            .unwrap();
        assert!(made.success());
        // A package whose build file is a link to one, a directory named as a build file, and
        // a package with a name that is no UTF-8 (its listing is not used: each path is
        // looked up).
        std::fs::create_dir_all(root.join("q")).unwrap();
        std::os::unix::fs::symlink(root.join("p/WBUILD"), root.join("q/WBUILD")).unwrap();
        std::fs::create_dir_all(root.join("r/WBUILD")).unwrap();
        std::fs::create_dir_all(root.join("u")).unwrap();
        std::fs::write(root.join("u/WBUILD"), "").unwrap();
        std::fs::write(root.join("u/ok.txt"), "").unwrap();
        let odd = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"odd\xff");
        std::fs::write(root.join("u").join(odd), "").unwrap();
        let (packages, listed) = find_packages(root, "");
        assert_eq!(packages, ["p", "q", "u"]);
        assert!(listed["p"].is_some() && listed["u"].is_none());
        // Answered from the walk's listings as when each directory is listed on its own.
        let known = Arc::new(listed);
        for mut l in [
            Listings::default(),
            Listings {
                known,
                ..Listings::default()
            },
        ] {
            listings_agree(root, &mut l);
        }
    }

    fn listings_agree(root: &Path, l: &mut Listings) {
        for path in [
            "u/ok.txt",
            "u/none",
            "r/WBUILD",
            "q/WBUILD",
            "p/a.txt",
            "p/sub",
            "p/sub/b.txt",
            "p/to_file",
            "p/to_dir",
            "p/to_dir/b.txt",
            "p/dangling",
            "p/fifo",
            "p/missing",
            "p/missing/x",
            "p/../p/a.txt",
            "p/./a.txt",
            "p/sub/",
            "nodir/x",
            "p",
        ] {
            let full = root.join(path);
            let want = match std::fs::metadata(&full) {
                Ok(m) if m.is_dir() => Found::Dir,
                Ok(m) if m.is_file() => Found::File,
                Ok(_) => Found::Special,
                Err(_) => Found::Missing,
            };
            assert!(l.find(root, path) == want, "{path}");
            assert_eq!(
                l.exists_no_follow(root, path),
                std::fs::symlink_metadata(&full).is_ok(),
                "{path}"
            );
        }
    }

    #[test]
    fn syntax_error_has_location() {
        let err = load_err(
            &[("p/WBUILD", "filegroup(name = 'x'\n\nfilegroup(")],
            &["//p:x"],
        );
        let msg = err.to_string();
        assert!(matches!(err, GraphError::Starlark { .. }), "{err:?}");
        assert!(msg.contains("p/WBUILD:3:1"), "{msg}");
        let GraphError::Starlark { location, .. } = err else {
            unreachable!()
        };
        assert_eq!(location.unwrap().line, 3);
    }

    #[test]
    fn wrong_types_and_unknown_attributes() {
        let err = load_err(
            &[("p/WBUILD", "\nfilegroup(name = 'x', srcs = 'a')\n")],
            &["//p:x"],
        );
        let msg = err.to_string();
        assert!(
            msg.contains("p/WBUILD:2:1") && msg.contains("srcs"),
            "{msg}"
        );
        let err = load_err(
            &[("p/WBUILD", "filegroup(name = 'x', sources = [])\n")],
            &["//p:x"],
        );
        let msg = err.to_string();
        assert!(
            msg.contains("p/WBUILD:1:1") && msg.contains("sources"),
            "{msg}"
        );
        let err = load_err(
            &[("p/WBUILD", "wasi_run(name = 'x', tool = ':t', outs = [])\n")],
            &["//p:x"],
        );
        assert!(matches!(err, GraphError::Attribute { .. }), "{err:?}");
        assert!(err.to_string().starts_with("p/WBUILD:1:1: "), "{err}");
        let err = load_err(
            &[(
                "p/WBUILD",
                "wasi_tool(name = 't', src = 't.wasm', data_dir = 'share')\n",
            )],
            &["//p:t"],
        );
        assert!(err.to_string().contains("data_dir"), "{err}");
        let err = load_err(
            &[("p/WBUILD", "filegroup(name = 'x', srcs = ['//a:b:c'])\n")],
            &["//p:x"],
        );
        assert!(err.to_string().contains("//a:b:c"), "{err}");
    }

    #[test]
    fn unknown_label_and_package() {
        let err = load_err(
            &[
                ("p/WBUILD", "\nfilegroup(name = 'x', srcs = ['//q:nope'])\n"),
                ("q/WBUILD", ""),
            ],
            &["//p:x"],
        );
        assert!(matches!(err, GraphError::NoSuchTarget { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("'//q:nope'") && msg.contains("//p:x") && msg.contains("p/WBUILD:2:1"),
            "{msg}"
        );
        let err = load_err(
            &[(
                "p/WBUILD",
                "filegroup(name = 'x', srcs = ['//missing:y'])\n",
            )],
            &["//p:x"],
        );
        assert!(matches!(err, GraphError::NoSuchPackage { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("'missing'") && msg.contains("//p:x") && msg.contains("p/WBUILD:1:1"),
            "{msg}"
        );
        let err = load_err(&[("p/WBUILD", "")], &["//p:nope"]);
        assert!(err.to_string().contains("command line"), "{err}");
        let err = load_err(&[("p/WBUILD", ""), ("p/f.txt", "")], &["//p:f.txt"]);
        assert!(matches!(err, GraphError::NotATarget { .. }), "{err:?}");
        let err = load_err(
            &[(
                "p/WBUILD",
                "wasi_run(name = 'x', tool = ':g', outs = ['o'])\nfilegroup(name = 'g')\n",
            )],
            &["//p:x"],
        );
        assert!(err.to_string().contains("not a wasi_tool"), "{err}");
    }

    #[test]
    fn missing_file() {
        let err = load_err(
            &[
                (
                    "p/WBUILD",
                    "filegroup(name = 'g')\n\n  \nfilegroup(name = 'x', srcs = ['a.txt', 'sub/none.txt'])\n",
                ),
                ("p/a.txt", ""),
            ],
            &["//p:x"],
        );
        assert_eq!(
            err.to_string(),
            "no such file 'sub/none.txt' in package 'p' (referenced at p/WBUILD:4:1)"
        );
        // A file inside a sub-package must be named through that package.
        let err = load_err(
            &[
                ("p/WBUILD", "filegroup(name = 'x', srcs = ['sub/a.txt'])\n"),
                ("p/sub/WBUILD", ""),
                ("p/sub/a.txt", ""),
            ],
            &["//p:x"],
        );
        assert!(err.to_string().contains("'//p/sub:a.txt'"), "{err}");
    }

    #[test]
    fn duplicate_target() {
        let err = load_err(
            &[(
                "p/WBUILD",
                "filegroup(name = 'x')\n\nfilegroup(name = 'x')\n",
            )],
            &["//p:x"],
        );
        assert!(matches!(err, GraphError::DuplicateTarget { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "p/WBUILD:3:1: duplicate target '//p:x': the name is already used by the target defined at p/WBUILD:1:1"
        );
    }

    #[test]
    fn output_collisions() {
        let tool = "wasi_tool(name = 't', src = 't.wasm')\n";
        let err = load_err(
            &[
                (
                    "p/WBUILD",
                    &format!("{tool}wasi_run(name = 'x', tool = ':t', outs = ['a.txt'])\n"),
                ),
                ("p/t.wasm", ""),
                ("p/a.txt", ""),
            ],
            &["//p:x"],
        );
        assert!(matches!(err, GraphError::OutputCollision { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "p/WBUILD:2:1: output 'p/a.txt' of //p:x collides with the source file 'p/a.txt'"
            ),
            "{msg}"
        );
        let err = load_err(
            &[
                (
                    "p/WBUILD",
                    &format!(
                        "{tool}wasi_run(name = 'x', tool = ':t', outs = ['o.txt'])\n\
                         wasi_run(name = 'y', tool = ':t', outs = ['o.txt'])\n"
                    ),
                ),
                ("p/t.wasm", ""),
            ],
            &["//p:x"],
        );
        assert!(matches!(err, GraphError::OutputCollision { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "p/WBUILD:3:1: output 'p/o.txt' of //p:y collides with an output of //p:x \
             (defined at p/WBUILD:2:1); rename the output"
        );
    }

    #[test]
    fn cycle_reports_whole_path() {
        let err = load_err(
            &[
                ("t/WBUILD", "wasi_tool(name = 't', src = 't.wasm')\n"),
                ("t/t.wasm", ""),
                (
                    "a/WBUILD",
                    "wasi_run(name = 'x', tool = '//t', srcs = ['//b:y.out'], outs = ['x.out'])\n",
                ),
                (
                    "b/WBUILD",
                    "filegroup(name = 'g', srcs = ['//a:x'])\nwasi_run(name = 'y', tool = '//t', srcs = [':g'], outs = ['y.out'])\n",
                ),
            ],
            &["//a:x"],
        );
        assert!(matches!(err, GraphError::Cycle { .. }), "{err:?}");
        assert!(
            err.to_string()
                .ends_with("dependency cycle: //a:x -> //b:y -> //b:g -> //a:x"),
            "{err}"
        );
        assert!(err.to_string().starts_with("a/WBUILD:1:1: "), "{err}");
        // A target that consumes its own output.
        let err = load_err(
            &[
                ("t/WBUILD", "wasi_tool(name = 't', src = 't.wasm')\n"),
                ("t/t.wasm", ""),
                (
                    "a/WBUILD",
                    "wasi_run(name = 'x', tool = '//t', srcs = ['x.out'], outs = ['x.out'])\n",
                ),
            ],
            &["//a:x"],
        );
        assert!(err.to_string().ends_with("//a:x -> //a:x"), "{err}");
    }

    #[test]
    fn unneeded_targets_are_not_checked() {
        let t = workspace(&[(
            "p/WBUILD",
            "filegroup(name = 'ok')\nfilegroup(name = 'broken', srcs = ['//elsewhere:x', 'missing.txt'])\n",
        )]);
        let (g, matched) = load(&t.ws, &patterns(&["//p:ok"])).unwrap();
        assert_eq!(matched, vec![label("//p:ok")]);
        assert_eq!(
            g.targets[&label("//p:broken")].rule,
            Rule::Filegroup(FilegroupAttrs {
                srcs: vec![
                    Dep::Target(label("//elsewhere:x")),
                    Dep::File("p/missing.txt".into())
                ]
            })
        );
    }

    #[test]
    fn native_namespace_and_package_name() {
        let t = workspace(&[(
            "x/y/WBUILD",
            "native.filegroup(name = package_name().replace('/', '_'))\n",
        )]);
        let (_, matched) = load(&t.ws, &patterns(&["//x/..."])).unwrap();
        assert_eq!(matched, vec![label("//x/y:x_y")]);
    }
}
