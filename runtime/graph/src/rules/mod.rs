//! The built-in rules, one module per family: what a rule's attributes are, its Starlark
//! built-in and the checks made when it is called, how its references resolve and what
//! actions analysis makes of it.
//!
//! A rule's attributes are one struct, generic over how references are held: as written
//! (`String`, in [`RawRule`]) or resolved ([`Dep`] for a file or target, [`Label`] for an
//! attribute that must name a target, in [`Rule`]). One `map` per struct turns one form into
//! the other, so strict resolution (`load.rs`), the lenient resolution of targets nothing
//! needs, and the dependency edges seen by analysis are the same code.
//!
//! Adding a rule: write its module (attribute struct implementing [`Attrs`], [`Check`] and
//! [`Analyse`], and a `#[starlark_module] fn builtins`), then add one line to the `rules!`
//! table below (and its `mod` line).

mod cc;
mod filegroup;
mod genrule;
mod wasi;
mod wasi_cc;

use starlark::environment::GlobalsBuilder;

use crate::analysis::{ActionNode, Analyser};
use crate::eval::Checker;
use crate::label::{Label, join};
use crate::{Dep, GraphError, Target};

pub use cc::script::sh_quote;
pub use cc::{CcAttrs, CcKind};
pub use filegroup::FilegroupAttrs;
pub use genrule::GenruleAttrs;
pub(crate) use wasi::tool_ref;
pub use wasi::{WasiRunAttrs, WasiTestAttrs, WasiToolAttrs};
pub use wasi_cc::WasiCcToolchainAttrs;

/// The rules with their attributes as written in a `WBUILD` file; label strings are
/// syntactically valid.
pub(crate) type RawRule = RuleOf<String, String>;

/// The rules a `WBUILD` file can call, with their attributes, references resolved.
pub type Rule = RuleOf<Dep, Label>;

/// What each rule's attribute struct provides; `D` holds a reference to a file or target, `L`
/// a reference that must name a target.
pub(crate) trait Attrs<D, L> {
    /// The same attributes with references held as `D2` and `L2`.
    type With<D2, L2>;

    /// The rule function's name as written in `WBUILD` files.
    fn kind(&self) -> &'static str;

    /// How an error names a target of this rule where another rule is wanted
    /// ("a filegroup", "a genrule target").
    fn described(&self) -> &'static str;

    /// The package-relative files a target named `name` generates.
    fn outputs(&self, _name: &str) -> Vec<String> {
        Vec::new()
    }

    /// The same attributes with every reference mapped by `m`, attribute by attribute in a
    /// fixed order (the order errors are found in).
    fn map<M: MapRefs<D, L>>(&self, m: &mut M) -> Result<Self::With<M::Dep, M::Label>, M::Error>;
}

/// Maps the references of a rule's attributes (see [`Attrs::map`]).
pub(crate) trait MapRefs<D, L> {
    type Dep;
    type Label;
    type Error;

    /// The references to files or targets of `attribute`, in order (a reference to a
    /// directory of a toolchain stands for every file under it).
    fn files(&mut self, attribute: &str, refs: &[D]) -> Result<Vec<Self::Dep>, Self::Error>;

    /// One reference to a file or target (the first file, for a toolchain directory).
    fn file(&mut self, attribute: &str, r: &D) -> Result<Self::Dep, Self::Error> {
        Ok(self.files(attribute, std::slice::from_ref(r))?.remove(0))
    }

    /// A reference in `attribute` that must name a target of the kind `want` accepts.
    fn target(&mut self, attribute: &str, r: &L, want: &Want) -> Result<Self::Label, Self::Error>;

    /// An attribute holding no reference, as the mapped rule holds it: a copy, unless the
    /// mapped rule is dropped unread (then an empty value, not a copy).
    fn keep<T: Clone + Default>(&mut self, value: &T) -> T {
        value.clone()
    }
}

/// What an attribute that names a target accepts.
pub(crate) struct Want {
    /// Whether a target with this rule is accepted.
    pub accepts: fn(&RawRule) -> bool,
    /// The message (after `attribute '...': `) when `reference` names `what` ("a file",
    /// [`Attrs::described`]) instead.
    pub refuse: fn(reference: &str, what: &str) -> String,
}

/// Checks of the attributes as written, made when the rule is called (only what needs no
/// other package).
pub(crate) trait Check {
    fn check(&self, c: &Checker<'_>) -> starlark::Result<()>;
}

/// Analysis of a resolved target.
pub(crate) trait Analyse: Attrs<Dep, Label> {
    /// Whether the target is analysed at all when `run_test` says whether its test is run
    /// (a test that does not run provides nothing and has no action).
    fn needed(&self, _run_test: bool) -> bool {
        true
    }

    /// The files the target provides to its users, in attribute order: by default its
    /// outputs.
    fn provides(&self, _a: &mut Analyser<'_>, t: &Target) -> Result<Vec<String>, GraphError> {
        Ok(self
            .outputs(&t.label.name)
            .iter()
            .map(|o| join(&t.label.package, o))
            .collect())
    }

    /// The target's actions, those it depends on already analysed.
    fn actions<'a>(
        &'a self,
        _a: &mut Analyser<'a>,
        _t: &'a Target,
        _run_test: bool,
    ) -> Result<Vec<ActionNode>, GraphError> {
        Ok(Vec::new())
    }
}

/// Declares [`RuleOf`] and its dispatch from the table of rules: per family, its module, its
/// variants and their attribute types (the first family registers its built-ins first).
macro_rules! rules {
    ($($module:ident: $($variant:ident($attrs:ty)),+;)+) => {
        /// A rule call's attributes. `D` holds a reference to a file or target, `L` a reference
        /// that must name a target: [`Rule`] holds them resolved.
        #[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
        pub enum RuleOf<D, L> {
            $($($variant($attrs),)+)+
        }

        impl<D, L> RuleOf<D, L> {
            /// The rule function's name as written in `WBUILD` files.
            pub fn kind(&self) -> &'static str {
                match self {
                    $($(Self::$variant(a) => <$attrs as Attrs<D, L>>::kind(a),)+)+
                }
            }

            pub(crate) fn described(&self) -> &'static str {
                match self {
                    $($(Self::$variant(a) => <$attrs as Attrs<D, L>>::described(a),)+)+
                }
            }

            /// The package-relative files a target named `name` with this rule generates.
            pub(crate) fn outputs(&self, name: &str) -> Vec<String> {
                match self {
                    $($(Self::$variant(a) => <$attrs as Attrs<D, L>>::outputs(a, name),)+)+
                }
            }

            /// See [`Attrs::map`].
            pub(crate) fn map<M: MapRefs<D, L>>(
                &self,
                m: &mut M,
            ) -> Result<RuleOf<M::Dep, M::Label>, M::Error> {
                Ok(match self {
                    $($(Self::$variant(a) => RuleOf::$variant(<$attrs as Attrs<D, L>>::map(a, m)?),)+)+
                })
            }
        }

        impl RawRule {
            pub(crate) fn check(&self, c: &Checker<'_>) -> starlark::Result<()> {
                match self {
                    $($(Self::$variant(a) => a.check(c),)+)+
                }
            }
        }

        impl Rule {
            pub(crate) fn needed(&self, run_test: bool) -> bool {
                match self {
                    $($(Self::$variant(a) => a.needed(run_test),)+)+
                }
            }

            pub(crate) fn provides(
                &self,
                a: &mut Analyser<'_>,
                t: &Target,
            ) -> Result<Vec<String>, GraphError> {
                match self {
                    $($(Self::$variant(r) => r.provides(a, t),)+)+
                }
            }

            pub(crate) fn actions<'a>(
                &'a self,
                a: &mut Analyser<'a>,
                t: &'a Target,
                run_test: bool,
            ) -> Result<Vec<ActionNode>, GraphError> {
                match self {
                    $($(Self::$variant(r) => r.actions(a, t, run_test),)+)+
                }
            }
        }

        /// Registers every rule's Starlark built-ins.
        pub(crate) fn builtins(builder: &mut GlobalsBuilder) {
            $($module::builtins(builder);)+
        }
    };
}

rules! {
    filegroup: Filegroup(filegroup::FilegroupAttrs<D>);
    wasi: WasiTool(wasi::WasiToolAttrs<D>), WasiRun(wasi::WasiRunAttrs<D, L>), WasiTest(wasi::WasiTestAttrs<D, L>);
    cc: Cc(cc::CcAttrs<D, L>);
    genrule: Genrule(genrule::GenruleAttrs<D>);
    wasi_cc: WasiCcToolchain(wasi_cc::WasiCcToolchainAttrs<L>);
}

/// The references of a resolved rule, unchanged, noting the targets they make its target
/// depend on (analysis: a file is a dependency on its producer, if generated).
pub(crate) struct Edges<'o> {
    /// Generated workspace path -> producing target.
    pub outputs: &'o rustc_hash::FxHashMap<String, Label>,
    pub found: Vec<Label>,
}

impl MapRefs<Dep, Label> for Edges<'_> {
    type Dep = Dep;
    type Label = Label;
    type Error = std::convert::Infallible;

    fn files(&mut self, _attribute: &str, refs: &[Dep]) -> Result<Vec<Dep>, Self::Error> {
        for d in refs {
            match d {
                Dep::Target(l) => self.found.push(l.clone()),
                Dep::File(p) => self.found.extend(self.outputs.get(p).cloned()),
            }
        }
        // Only the edges are wanted: the mapped rule is dropped.
        Ok(Vec::new())
    }

    fn file(&mut self, attribute: &str, r: &Dep) -> Result<Dep, Self::Error> {
        self.files(attribute, std::slice::from_ref(r))?;
        Ok(Dep::File(String::new()))
    }

    fn target(&mut self, _attribute: &str, l: &Label, _want: &Want) -> Result<Label, Self::Error> {
        self.found.push(l.clone());
        Ok(EMPTY_LABEL.clone())
    }

    fn keep<T: Clone + Default>(&mut self, _value: &T) -> T {
        T::default()
    }
}

/// What a mapped rule that is dropped unread holds in place of a label (one allocation,
/// shared).
static EMPTY_LABEL: std::sync::LazyLock<Label> = std::sync::LazyLock::new(Label::default);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load;
    use crate::testutil::*;

    fn load_err(files: &[(&str, &str)], pats: &[&str]) -> String {
        let t = workspace(files);
        match load(&t.ws, &patterns(pats)) {
            Ok((g, _)) => panic!("expected an error, loaded {:?}", g.targets.keys()),
            Err(e) => e.to_string(),
        }
    }

    const PKG: &str = "\
wasi_tool(name = 't', src = 't.wasm', data = ['d.txt'])
filegroup(name = 'fg', srcs = ['a.txt', ':made'])
wasi_run(name = 'made', tool = ':t', srcs = ['a.txt'], outs = ['made.txt'])
wasi_test(name = 'check', tool = ':t', srcs = [':fg', 'made.txt'])
genrule(name = 'gen', srcs = ['a.txt'], outs = ['g.h'], cmd = 'cp $< $@', tools = [':t'])
cc_library(name = 'lib', srcs = ['l.c'], hdrs = ['g.h'], copts = ['-O2'], includes = ['.'])
cc_binary(name = 'bin', srcs = ['b.c'], deps = [':lib'], linkopts = ['-lm'])
cc_test(name = 'test', srcs = ['t.c'], deps = [':lib'])
";

    fn pkg_files() -> Vec<(&'static str, &'static str)> {
        let mut files = vec![("p/WBUILD", PKG)];
        for f in ["t.wasm", "d.txt", "a.txt", "l.c", "b.c", "t.c"] {
            files.push((Box::leak(format!("p/{f}").into_boxed_str()), ""));
        }
        files
    }

    /// A target nothing needs is resolved leniently, by the same `map` as a needed one: where
    /// every reference can be resolved, both give the same rule.
    #[test]
    fn unneeded_targets_resolve_like_needed_ones() {
        let t = workspace(&pkg_files());
        let (all, _) = load(&t.ws, &patterns(&["//p:all"])).unwrap();
        let names = ["t", "fg", "made", "check", "gen", "lib", "bin", "test"];
        assert_eq!(all.targets.len(), names.len());
        for needed in names {
            let (one, matched) = load(&t.ws, &patterns(&[&format!("//p:{needed}")])).unwrap();
            assert_eq!(matched, vec![label(&format!("//p:{needed}"))]);
            assert_eq!(one, all, "loading only //p:{needed}");
        }
        let rule = |n: &str| &all.targets[&label(&format!("//p:{n}"))].rule;
        let kinds: Vec<&str> = names.iter().map(|n| rule(n).kind()).collect();
        assert_eq!(
            kinds,
            [
                "wasi_tool",
                "filegroup",
                "wasi_run",
                "wasi_test",
                "genrule",
                "cc_library",
                "cc_binary",
                "cc_test"
            ]
        );
        assert_eq!(
            rule("bin"),
            &Rule::Cc(CcAttrs {
                kind: CcKind::Binary,
                srcs: vec![Dep::File("p/b.c".into())],
                hdrs: vec![],
                deps: vec![label("//p:lib")],
                copts: vec![],
                defines: vec![],
                includes: vec![],
                linkopts: vec!["-lm".into()],
                toolchain: None,
            })
        );
        assert_eq!(
            rule("check"),
            &Rule::WasiTest(WasiTestAttrs {
                tool: label("//p:t"),
                srcs: vec![Dep::Target(label("//p:fg")), Dep::File("p/made.txt".into())],
                args: vec![],
                env: std::collections::BTreeMap::new(),
            })
        );
    }

    /// An attribute that must name a target of one rule says what was named instead, with the
    /// location of the rule call and the label of the target.
    #[test]
    fn refused_references_name_what_they_found() {
        let tool_msg = |what: &str, reference: &str| {
            format!(
                "p/WBUILD:9:1: //p:x: attribute 'tool': '{reference}' is {what}, not a wasi_tool; \
                 define wasi_tool(name = ..., src = \"tool.wasm\") and name it here"
            )
        };
        for (reference, what) in [
            (":fg", "a filegroup"),
            (":made", "a wasi_run target"),
            (":check", "a wasi_test target"),
            (":gen", "a genrule target"),
            (":lib", "a cc_* target"),
            ("a.txt", "a file"),
        ] {
            let mut files = pkg_files();
            let build =
                format!("{PKG}wasi_run(name = 'x', tool = '{reference}', outs = ['x.out'])\n");
            files[0].1 = Box::leak(build.into_boxed_str());
            assert_eq!(
                load_err(&files, &["//p:x"]),
                tool_msg(what, reference),
                "{reference}"
            );
        }
        for reference in [":fg", ":bin", ":test", "l.c"] {
            let mut files = pkg_files();
            let build = format!("{PKG}cc_binary(name = 'x', deps = ['{reference}'])\n");
            files[0].1 = Box::leak(build.into_boxed_str());
            assert_eq!(
                load_err(&files, &["//p:x"]),
                format!(
                    "p/WBUILD:9:1: //p:x: attribute 'deps': '{reference}' is not a cc_library; \
                     deps of cc_* rules name cc_library targets (put files in srcs or hdrs)"
                ),
            );
        }
    }

    /// The three `cc_*` built-ins share one definition, but only `cc_library` takes `hdrs`.
    #[test]
    fn only_cc_library_takes_hdrs() {
        for rule in ["cc_binary", "cc_test"] {
            let build = format!("\n{rule}(name = 'x', srcs = ['b.c'], hdrs = ['h.h'])\n");
            let err = load_err(
                &[("p/WBUILD", &build), ("p/b.c", ""), ("p/h.h", "")],
                &["//p:x"],
            );
            assert!(err.contains("p/WBUILD:2:1"), "{err}");
            assert!(err.contains("hdrs"), "{err}");
        }
        let t = workspace(&[
            ("p/WBUILD", "cc_library(name = 'x', hdrs = ['h.h'])\n"),
            ("p/h.h", ""),
        ]);
        let (g, _) = load(&t.ws, &patterns(&["//p:x"])).unwrap();
        let Rule::Cc(cc) = &g.targets[&label("//p:x")].rule else {
            panic!("not a cc rule");
        };
        assert_eq!(
            (cc.kind, &cc.hdrs),
            (CcKind::Library, &vec![Dep::File("p/h.h".into())])
        );
    }
}
