//! `filegroup(name, srcs = [])`: names a set of files. No action; it provides its `srcs`.

use starlark::environment::GlobalsBuilder;
use starlark::eval::Evaluator;
use starlark::starlark_module;
use starlark::values::list_or_tuple::UnpackListOrTuple;
use starlark::values::none::NoneType;

use super::{Analyse, Attrs, Check, MapRefs, RawRule};
use crate::analysis::Analyser;
use crate::eval::{Checker, Strings, add_target};
use crate::{Dep, GraphError, Target};

/// `filegroup(name, srcs = [])`: names a set of files.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FilegroupAttrs<D> {
    pub srcs: Vec<D>,
}

impl<D, L> Attrs<D, L> for FilegroupAttrs<D> {
    type With<D2, L2> = FilegroupAttrs<D2>;

    fn kind(&self) -> &'static str {
        "filegroup"
    }

    fn described(&self) -> &'static str {
        "a filegroup"
    }

    fn map<M: MapRefs<D, L>>(&self, m: &mut M) -> Result<FilegroupAttrs<M::Dep>, M::Error> {
        Ok(FilegroupAttrs {
            srcs: m.files("srcs", &self.srcs)?,
        })
    }
}

impl Check for FilegroupAttrs<String> {
    fn check(&self, c: &Checker<'_>) -> starlark::Result<()> {
        c.labels("srcs", &self.srcs)
    }
}

impl Analyse for FilegroupAttrs<Dep> {
    fn provides(&self, a: &mut Analyser<'_>, t: &Target) -> Result<Vec<String>, GraphError> {
        let mut v = Vec::new();
        for d in &self.srcs {
            v.extend(a.dep_files(d, t)?);
        }
        Ok(v)
    }
}

#[starlark_module]
pub(super) fn builtins(builder: &mut GlobalsBuilder) {
    /// A named set of files: `filegroup(name, srcs = [])`.
    fn filegroup<'v>(
        #[starlark(require = named)] name: String,
        #[starlark(require = named, default = UnpackListOrTuple::default())] srcs: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] visibility: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] tags: Strings,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<NoneType> {
        let _ = (visibility, tags);
        add_target(
            eval,
            "filegroup",
            name,
            RawRule::Filegroup(FilegroupAttrs { srcs: srcs.items }),
            None,
        )
    }
}
