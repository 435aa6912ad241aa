//! `wasi_cc_toolchain`: a C/C++ toolchain that is itself WASI. `cc_*` targets that name one
//! (`toolchain = "//tools:wasi_cc"`) compile, archive and link with its tools in the WASI
//! executor instead of the host's gcc in the native sandbox, so every header a compile reads
//! is observed exactly and its outputs are the same on every host.

use starlark::environment::GlobalsBuilder;
use starlark::eval::Evaluator;
use starlark::starlark_module;
use starlark::values::list_or_tuple::UnpackListOrTuple;
use starlark::values::none::NoneType;

use super::wasi::TOOL;
use super::{Analyse, Attrs, Check, MapRefs, RawRule, Want};
use crate::eval::{Checker, Strings, add_target};
use crate::label::Label;

/// `wasi_cc_toolchain(name, clang, ld, ar, copts = [], link_head = [], link_tail = [])`:
/// `clang` compiles one source (`clang -c`, run in-process: a WASI module cannot spawn the
/// compiler proper), `ld` links (`wasm-ld`: the driver cannot spawn it either), `ar` archives
/// (`llvm-ar`); each is a `wasi_tool` (one multicall module may be all three, through
/// `argv0`). `copts` start every compile (the target and sysroot: `--target=wasm32-wasip1`,
/// `--sysroot=/usr`), `link_head` and `link_tail` come before and after a link's objects and
/// archives (the C runtime's start file; `-lc` and the compiler's builtins).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WasiCcToolchainAttrs<L> {
    pub clang: L,
    pub ld: L,
    pub ar: L,
    pub copts: Vec<String>,
    pub link_head: Vec<String>,
    pub link_tail: Vec<String>,
}

/// A `toolchain` attribute names a `wasi_cc_toolchain`.
pub(crate) const TOOLCHAIN: Want = Want {
    accepts: is_toolchain,
    refuse: not_a_toolchain,
};

fn is_toolchain(rule: &RawRule) -> bool {
    matches!(rule, RawRule::WasiCcToolchain(_))
}

fn not_a_toolchain(reference: &str, what: &str) -> String {
    format!(
        "'{reference}' is {what}, not a wasi_cc_toolchain; define \
         wasi_cc_toolchain(name = ..., clang = ..., ld = ..., ar = ...) and name it here"
    )
}

impl<D, L> Attrs<D, L> for WasiCcToolchainAttrs<L> {
    type With<D2, L2> = WasiCcToolchainAttrs<L2>;

    fn kind(&self) -> &'static str {
        "wasi_cc_toolchain"
    }

    fn described(&self) -> &'static str {
        "a wasi_cc_toolchain"
    }

    fn map<M: MapRefs<D, L>>(&self, m: &mut M) -> Result<Self::With<M::Dep, M::Label>, M::Error> {
        Ok(WasiCcToolchainAttrs {
            clang: m.target("clang", &self.clang, &TOOL)?,
            ld: m.target("ld", &self.ld, &TOOL)?,
            ar: m.target("ar", &self.ar, &TOOL)?,
            copts: m.keep(&self.copts),
            link_head: m.keep(&self.link_head),
            link_tail: m.keep(&self.link_tail),
        })
    }
}

impl Check for WasiCcToolchainAttrs<String> {
    fn check(&self, c: &Checker<'_>) -> starlark::Result<()> {
        c.labels("clang", std::slice::from_ref(&self.clang))?;
        c.labels("ld", std::slice::from_ref(&self.ld))?;
        c.labels("ar", std::slice::from_ref(&self.ar))
    }
}

/// A toolchain has no action of its own; the `cc_*` targets naming it run its tools.
impl Analyse for WasiCcToolchainAttrs<Label> {}

#[starlark_module]
pub(super) fn builtins(builder: &mut GlobalsBuilder) {
    /// A C/C++ toolchain of WASI tools, for `cc_*` targets' `toolchain` attribute:
    /// `wasi_cc_toolchain(name, clang, ld, ar, copts = [], link_head = [], link_tail = [])`.
    #[allow(clippy::too_many_arguments)] // One parameter per attribute.
    fn wasi_cc_toolchain<'v>(
        #[starlark(require = named)] name: String,
        #[starlark(require = named)] clang: String,
        #[starlark(require = named)] ld: String,
        #[starlark(require = named)] ar: String,
        #[starlark(require = named, default = UnpackListOrTuple::default())] copts: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] link_head: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] link_tail: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] visibility: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] tags: Strings,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<NoneType> {
        let _ = (visibility, tags);
        let attrs = WasiCcToolchainAttrs {
            clang,
            ld,
            ar,
            copts: copts.items,
            link_head: link_head.items,
            link_tail: link_tail.items,
        };
        add_target(
            eval,
            "wasi_cc_toolchain",
            name,
            RawRule::WasiCcToolchain(attrs),
            None,
        )
    }
}
