//! `wbuild query`: Bazel-style queries over the target graph (the loaded `WBUILD` files,
//! before analysis).
//!
//! Three steps: [`Query::parse`] turns the expression into a tree whose every part keeps its
//! byte offset (so errors point at a column); [`load`] loads the packages its target patterns
//! need (a dependency cycle does not stop it: it is returned for the caller to report); and
//! [`Query::evaluate`] computes the result over a [`QueryGraph`], which is pure: it reads
//! nothing but the [`TargetGraph`].
//!
//! The graph's nodes are the targets and, as in Bazel, the files they reference: a *source
//! file* (kind `source file`) or a *generated file* (kind `generated file`, an output of
//! another target, which depends on the target producing it). `deps()` therefore includes
//! source files; `kind(rule, ...)` keeps only rules, `- kind(" file$", ...)` drops the files.
//! A rule target's kind is `<rule> rule` (`wasi_tool rule`, `cc_library rule`), as in Bazel.
//! Files of a pinned toolchain are labelled `@name//path`.
//!
//! Results are sets; they are printed sorted by package, then name (toolchain files last),
//! not in Bazel's dependency order.

use std::collections::HashMap;
use std::fmt;

use regex::Regex;

use crate::label::{Label, TargetPattern, join};
use crate::rules::{MapRefs, Want};
use crate::workspace::{EXTERNAL_PREFIX, Workspace};
use crate::{Dep, GraphError, Rule, Target, TargetGraph};

// ---------------------------------------------------------------------------------------------
// Errors

/// What is wrong with a query.
#[derive(Debug, thiserror::Error)]
pub enum QueryErrorKind {
    #[error("unexpected character '{0}'")]
    UnexpectedChar(char),
    #[error("unterminated quoted word: add the closing {0}")]
    Unterminated(char),
    #[error("expected {expected}, found {found}")]
    Expected {
        expected: &'static str,
        found: String,
    },
    #[error("unknown function '{name}'{}", suggest(.suggestion))]
    UnknownFunction {
        name: String,
        suggestion: Option<&'static str>,
    },
    #[error("{function}() takes {expected}; given {given}")]
    ArgCount {
        function: &'static str,
        expected: &'static str,
        given: usize,
    },
    #[error("{function}(): {what}, found '{found}'")]
    ArgType {
        function: &'static str,
        what: &'static str,
        found: String,
    },
    #[error("{function}(): invalid regular expression '{pattern}': {message}")]
    BadRegex {
        function: &'static str,
        pattern: String,
        message: String,
    },
    #[error("the expression nests more than {0} levels deep; simplify it")]
    TooDeep(usize),
    #[error("undefined variable '${0}': bind it first with `let {0} = ... in ...`")]
    UndefinedVariable(String),
    /// A target pattern that cannot be parsed, names a package or target that does not
    /// exist, or matches no package.
    #[error("{0}")]
    Pattern(GraphError),
    /// Loading the `WBUILD` files failed for a reason no single part of the query causes.
    #[error("cannot load the target graph: {0}")]
    Load(GraphError),
}

fn suggest(s: &Option<&'static str>) -> String {
    match s {
        Some(s) => format!("; did you mean '{s}'?"),
        None => format!(" (the functions are {})", FUNCTIONS.join(", ")),
    }
}

/// A query error: what is wrong, and where in the expression (rendered with the expression
/// and a caret under the column at fault). Boxed: the parser recurses, and a small `Result`
/// keeps its frames small.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.render())]
pub struct QueryError(Box<ErrorInner>);

#[derive(Debug)]
struct ErrorInner {
    kind: QueryErrorKind,
    offset: Option<usize>,
    expr: String,
}

impl QueryError {
    #[inline(never)]
    fn new(kind: QueryErrorKind, offset: Option<usize>, expr: &str) -> QueryError {
        QueryError(Box::new(ErrorInner {
            kind,
            offset,
            expr: expr.to_owned(),
        }))
    }

    /// What is wrong.
    pub fn kind(&self) -> &QueryErrorKind {
        &self.0.kind
    }

    /// Byte offset in the expression, if one part of it is at fault.
    pub fn offset(&self) -> Option<usize> {
        self.0.offset
    }

    /// 1-based line and column (in characters) of the part at fault.
    pub fn line_col(&self) -> Option<(usize, usize)> {
        let off = self.0.offset?.min(self.0.expr.len());
        let before = &self.0.expr[..off];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Some((line, before[line_start..].chars().count() + 1))
    }

    fn render(&self) -> String {
        let Some((line, col)) = self.line_col() else {
            return format!("query: {}", self.0.kind);
        };
        let text = self.0.expr.lines().nth(line - 1).unwrap_or("");
        // The echoed line keeps tabs so the caret lines up under them.
        let pad: String = text
            .chars()
            .take(col - 1)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        format!("query: {line}:{col}: {}\n  {text}\n  {pad}^", self.0.kind)
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    /// An unquoted word: a target pattern, a function name, a regex, an integer.
    Word(String),
    /// A quoted word (no escapes, as in Bazel).
    Quoted(String),
    /// `$name`.
    Var(String),
    LParen,
    RParen,
    Comma,
    Equals,
    Op(SetOp),
    Let,
    In,
    Eof,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Word(w) => write!(f, "'{w}'"),
            Tok::Quoted(w) => write!(f, "\"{w}\""),
            Tok::Var(v) => write!(f, "'${v}'"),
            Tok::LParen => f.write_str("'('"),
            Tok::RParen => f.write_str("')'"),
            Tok::Comma => f.write_str("','"),
            Tok::Equals => f.write_str("'='"),
            Tok::Op(op) => write!(f, "'{}'", op.symbol()),
            Tok::Let => f.write_str("'let'"),
            Tok::In => f.write_str("'in'"),
            Tok::Eof => f.write_str("the end of the expression"),
        }
    }
}

/// The binary set operators; all have the same precedence and associate to the left.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SetOp {
    Union,
    Except,
    Intersect,
}

impl SetOp {
    fn symbol(self) -> &'static str {
        match self {
            SetOp::Union => "+",
            SetOp::Except => "-",
            SetOp::Intersect => "^",
        }
    }
}

/// Characters of an unquoted word (Bazel's set: `A-Za-z0-9*/@.-_:$~[]`); a word may not start
/// with `-` or `*`.
fn word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "*/@.-_:$~[]".contains(c)
}

fn lex(text: &str) -> Result<Vec<(Tok, usize)>, QueryError> {
    let err = |k, at| Err(QueryError::new(k, Some(at), text));
    let mut toks = Vec::new();
    let mut it = text.char_indices().peekable();
    while let Some(&(i, c)) = it.peek() {
        let single = match c {
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            ',' => Some(Tok::Comma),
            '=' => Some(Tok::Equals),
            '+' => Some(Tok::Op(SetOp::Union)),
            '-' => Some(Tok::Op(SetOp::Except)),
            '^' => Some(Tok::Op(SetOp::Intersect)),
            _ => None,
        };
        if let Some(t) = single {
            it.next();
            toks.push((t, i));
            continue;
        }
        if c.is_whitespace() {
            it.next();
            continue;
        }
        if c == '"' || c == '\'' {
            it.next();
            let start = i + 1;
            let mut end = None;
            for (j, d) in it.by_ref() {
                if d == c {
                    end = Some(j);
                    break;
                }
            }
            let Some(end) = end else {
                return err(QueryErrorKind::Unterminated(c), i);
            };
            toks.push((Tok::Quoted(text[start..end].to_owned()), i));
            continue;
        }
        if !word_char(c) || c == '*' {
            return err(QueryErrorKind::UnexpectedChar(c), i);
        }
        let mut end = text.len();
        while let Some(&(j, d)) = it.peek() {
            if !word_char(d) {
                end = j;
                break;
            }
            it.next();
        }
        let word = &text[i..end];
        let tok = if let Some(name) = word.strip_prefix('$') {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return err(
                    QueryErrorKind::Expected {
                        expected: "a variable name (letters, digits, '_') after '$'",
                        found: format!("'{word}'"),
                    },
                    i,
                );
            }
            Tok::Var(name.to_owned())
        } else {
            match word {
                "let" => Tok::Let,
                "in" => Tok::In,
                "union" => Tok::Op(SetOp::Union),
                "except" => Tok::Op(SetOp::Except),
                "intersect" => Tok::Op(SetOp::Intersect),
                _ => Tok::Word(word.to_owned()),
            }
        };
        toks.push((tok, i));
    }
    toks.push((Tok::Eof, text.len()));
    Ok(toks)
}

// ---------------------------------------------------------------------------------------------
// Syntax tree and parser

/// The query functions, for "did you mean" and the error listing them.
const FUNCTIONS: &[&str] = &[
    "allpaths", "attr", "deps", "filter", "kind", "rdeps", "set", "somepath", "tests",
];

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Func {
    Deps,
    Rdeps,
    Somepath,
    Allpaths,
    Kind,
    Attr,
    Filter,
    Tests,
}

/// One argument, as the function's signature wants it.
#[derive(Copy, Clone, PartialEq, Eq)]
enum ArgKind {
    Expr,
    Word,
    /// An optional non-negative integer, last.
    Depth,
}

impl Func {
    fn from_name(name: &str) -> Option<Func> {
        Some(match name {
            "deps" => Func::Deps,
            "rdeps" => Func::Rdeps,
            "somepath" => Func::Somepath,
            "allpaths" => Func::Allpaths,
            "kind" => Func::Kind,
            "attr" => Func::Attr,
            "filter" => Func::Filter,
            "tests" => Func::Tests,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Func::Deps => "deps",
            Func::Rdeps => "rdeps",
            Func::Somepath => "somepath",
            Func::Allpaths => "allpaths",
            Func::Kind => "kind",
            Func::Attr => "attr",
            Func::Filter => "filter",
            Func::Tests => "tests",
        }
    }

    fn signature(self) -> (&'static [ArgKind], &'static str) {
        use ArgKind::*;
        match self {
            Func::Deps => (
                &[Expr, Depth],
                "1 or 2 arguments: deps(expr) or deps(expr, depth)",
            ),
            Func::Rdeps => (
                &[Expr, Expr, Depth],
                "2 or 3 arguments: rdeps(universe, expr) or rdeps(universe, expr, depth)",
            ),
            Func::Somepath => (&[Expr, Expr], "2 arguments: somepath(from, to)"),
            Func::Allpaths => (&[Expr, Expr], "2 arguments: allpaths(from, to)"),
            Func::Kind => (&[Word, Expr], "2 arguments: kind(regex, expr)"),
            Func::Attr => (&[Word, Word, Expr], "3 arguments: attr(name, regex, expr)"),
            Func::Filter => (&[Word, Expr], "2 arguments: filter(regex, expr)"),
            Func::Tests => (&[Expr], "1 argument: tests(expr)"),
        }
    }
}

#[derive(Debug)]
enum Arg {
    Expr(Expr),
    Word(String, usize),
    Depth(usize),
}

#[derive(Debug)]
enum Expr {
    /// A target pattern (index into [`Query::atoms`]).
    Atom(usize),
    Var(usize),
    Let {
        var: usize,
        value: Box<Expr>,
        body: Box<Expr>,
    },
    /// `a op b op c ...`, left-associative (a flat list: a long chain does not nest).
    Chain(Box<Expr>, Vec<(SetOp, Expr)>),
    Call(Func, Vec<Arg>),
    /// `set(a b c)`: the union of the patterns (indices into [`Query::atoms`]).
    Set(Vec<usize>),
}

/// A target pattern of the expression, where it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Atom {
    pub pattern: TargetPattern,
    /// Byte offset in the expression.
    pub offset: usize,
}

/// A parsed query.
#[derive(Debug)]
pub struct Query {
    text: String,
    expr: Expr,
    atoms: Vec<Atom>,
    /// Names bound by `let`, by index (shadowing is by index).
    vars: Vec<String>,
    regexes: HashMap<usize, Regex>,
}

struct Parser<'t> {
    text: &'t str,
    package: &'t str,
    toks: Vec<(Tok, usize)>,
    pos: usize,
    atoms: Vec<Atom>,
    vars: Vec<String>,
    /// Variables in scope: name -> index into `vars`, innermost last.
    scope: Vec<(String, usize)>,
    regexes: HashMap<usize, Regex>,
    /// Nesting of sub-expressions (bounded: the parser and evaluator recurse).
    depth: usize,
}

/// How deeply sub-expressions may nest.
const MAX_DEPTH: usize = 100;

impl Query {
    /// Parses `text`; relative patterns (`:name`, `sub/...`) are relative to `package`.
    pub fn parse(text: &str, package: &str) -> Result<Query, QueryError> {
        let toks = lex(text)?;
        let mut p = Parser {
            text,
            package,
            toks,
            pos: 0,
            atoms: Vec::new(),
            vars: Vec::new(),
            scope: Vec::new(),
            regexes: HashMap::new(),
            depth: 0,
        };
        let expr = p.expr()?;
        if p.peek() != &Tok::Eof {
            return Err(p.expected("an operator (+, -, ^, union, except, intersect) or the end"));
        }
        Ok(Query {
            text: text.to_owned(),
            expr,
            atoms: p.atoms,
            vars: p.vars,
            regexes: p.regexes,
        })
    }

    /// The target patterns of the expression, in order.
    pub fn atoms(&self) -> &[Atom] {
        &self.atoms
    }

    fn error(&self, kind: QueryErrorKind, offset: Option<usize>) -> QueryError {
        QueryError::new(kind, offset, &self.text)
    }
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }

    fn offset(&self) -> usize {
        self.toks[self.pos].1
    }

    fn next(&mut self) -> (Tok, usize) {
        let t = self.toks[self.pos].clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    #[inline(never)]
    fn err(&self, kind: QueryErrorKind, offset: usize) -> QueryError {
        QueryError::new(kind, Some(offset), self.text)
    }

    #[inline(never)]
    fn expected(&self, expected: &'static str) -> QueryError {
        self.err(
            QueryErrorKind::Expected {
                expected,
                found: self.peek().to_string(),
            },
            self.offset(),
        )
    }

    #[inline(never)]
    fn expect(&mut self, t: Tok, expected: &'static str) -> Result<(), QueryError> {
        if *self.peek() == t {
            self.next();
            Ok(())
        } else {
            Err(self.expected(expected))
        }
    }

    /// expr := primary (op primary)*
    fn expr(&mut self) -> Result<Expr, QueryError> {
        if self.depth == MAX_DEPTH {
            return Err(self.too_deep());
        }
        self.depth += 1;
        let result = self.expr_inner();
        self.depth -= 1;
        result
    }

    #[inline(never)]
    fn too_deep(&self) -> QueryError {
        self.err(QueryErrorKind::TooDeep(MAX_DEPTH), self.offset())
    }

    fn expr_inner(&mut self) -> Result<Expr, QueryError> {
        let first = self.primary()?;
        let mut rest = Vec::new();
        while let Tok::Op(op) = *self.peek() {
            self.next();
            rest.push((op, self.primary()?));
        }
        Ok(if rest.is_empty() {
            first
        } else {
            Expr::Chain(Box::new(first), rest)
        })
    }

    #[inline(never)]
    fn atom(&mut self, word: &str, offset: usize) -> Result<usize, QueryError> {
        let pattern = TargetPattern::parse(word, self.package)
            .map_err(|e| self.err(QueryErrorKind::Pattern(e), offset))?;
        self.atoms.push(Atom { pattern, offset });
        Ok(self.atoms.len() - 1)
    }

    // The functions on the recursive path (expr, expr_inner, primary, call, arg, let_expr)
    // keep their frames small: everything else is in helpers that are not inlined.

    fn primary(&mut self) -> Result<Expr, QueryError> {
        let (tok, offset) = self.next();
        match tok {
            Tok::LParen => {
                let e = self.expr()?;
                self.expect(Tok::RParen, "')'")?;
                Ok(e)
            }
            Tok::Let => self.let_expr(),
            Tok::Var(name) => self.var(name, offset),
            Tok::Word(word) if *self.peek() == Tok::LParen => self.call(word, offset),
            Tok::Word(word) | Tok::Quoted(word) => Ok(Expr::Atom(self.atom(&word, offset)?)),
            other => Err(self.not_primary(other, offset)),
        }
    }

    #[inline(never)]
    fn not_primary(&self, found: Tok, offset: usize) -> QueryError {
        self.err(
            QueryErrorKind::Expected {
                expected: "a target pattern, a function call, 'let', '$var' or '('",
                found: found.to_string(),
            },
            offset,
        )
    }

    #[inline(never)]
    fn var(&self, name: String, offset: usize) -> Result<Expr, QueryError> {
        match self.scope.iter().rev().find(|(n, _)| *n == name) {
            Some((_, var)) => Ok(Expr::Var(*var)),
            None => Err(self.err(QueryErrorKind::UndefinedVariable(name), offset)),
        }
    }

    /// `let name = value in body`, after `let`.
    fn let_expr(&mut self) -> Result<Expr, QueryError> {
        let name = self.let_name()?;
        let value = self.expr()?;
        self.expect(Tok::In, "'in' after the value of the variable")?;
        self.vars.push(name.clone());
        let var = self.vars.len() - 1;
        self.scope.push((name, var));
        let body = self.expr();
        self.scope.pop();
        Ok(Expr::Let {
            var,
            value: Box::new(value),
            body: Box::new(body?),
        })
    }

    /// The variable name of a `let` and the `=` after it.
    #[inline(never)]
    fn let_name(&mut self) -> Result<String, QueryError> {
        let (name, name_at) = self.next();
        let found = match name {
            Tok::Word(name) if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                self.expect(Tok::Equals, "'=' after the variable name")?;
                return Ok(name);
            }
            Tok::Word(name) => format!("'{name}'"),
            other => other.to_string(),
        };
        Err(self.err(
            QueryErrorKind::Expected {
                expected: "a variable name (letters, digits, '_') after 'let'",
                found,
            },
            name_at,
        ))
    }

    /// `name(args)`, at `(`.
    fn call(&mut self, name: String, at: usize) -> Result<Expr, QueryError> {
        self.next(); // (
        if name == "set" {
            return self.set_call();
        }
        let func = self.function(name, at)?;
        let mut args = Vec::new();
        if *self.peek() != Tok::RParen {
            loop {
                let arg = self.arg(func, args.len())?;
                args.push(arg);
                if !self.after_arg()? {
                    break;
                }
            }
        }
        self.expect(Tok::RParen, "')'")?;
        self.finish_call(func, at, args)
    }

    #[inline(never)]
    fn function(&self, name: String, at: usize) -> Result<Func, QueryError> {
        Func::from_name(&name).ok_or_else(|| {
            self.err(
                QueryErrorKind::UnknownFunction {
                    suggestion: closest(&name),
                    name,
                },
                at,
            )
        })
    }

    /// After an argument: whether a `,` (another argument) follows; at `)` false.
    #[inline(never)]
    fn after_arg(&mut self) -> Result<bool, QueryError> {
        match self.peek() {
            Tok::Comma => {
                self.next();
                Ok(true)
            }
            Tok::RParen => Ok(false),
            _ => Err(self.expected("',' or ')' after an argument")),
        }
    }

    /// Argument number `i` of `func`, as its signature wants it (extra ones as expressions,
    /// to count them).
    fn arg(&mut self, func: Func, i: usize) -> Result<Arg, QueryError> {
        match func.signature().0.get(i).copied().unwrap_or(ArgKind::Expr) {
            ArgKind::Expr => Ok(Arg::Expr(self.expr()?)),
            kind => self.word_arg(func, kind),
        }
    }

    #[inline(never)]
    fn word_arg(&mut self, func: Func, kind: ArgKind) -> Result<Arg, QueryError> {
        let (tok, offset) = self.next();
        let bad = |what, found: String| {
            self.err(
                QueryErrorKind::ArgType {
                    function: func.name(),
                    what,
                    found,
                },
                offset,
            )
        };
        let word = match tok {
            Tok::Word(w) | Tok::Quoted(w) => w,
            other => {
                let found = other.to_string().trim_matches('\'').to_owned();
                return Err(if kind == ArgKind::Word {
                    bad(
                        "this argument is a word (quote it if it holds other characters)",
                        found,
                    )
                } else {
                    bad("the depth must be a non-negative integer", found)
                });
            }
        };
        if kind == ArgKind::Depth {
            match word.parse::<usize>() {
                Ok(d) => Ok(Arg::Depth(d)),
                Err(_) => Err(bad("the depth must be a non-negative integer", word)),
            }
        } else {
            Ok(Arg::Word(word, offset))
        }
    }

    /// Checks the argument count and compiles the regular expression of a call (so a bad
    /// one is reported before anything is loaded).
    #[inline(never)]
    fn finish_call(&mut self, func: Func, at: usize, args: Vec<Arg>) -> Result<Expr, QueryError> {
        let (sig, expected) = func.signature();
        let required = sig.iter().filter(|k| **k != ArgKind::Depth).count();
        if args.len() < required || args.len() > sig.len() {
            return Err(self.err(
                QueryErrorKind::ArgCount {
                    function: func.name(),
                    expected,
                    given: args.len(),
                },
                at,
            ));
        }
        let regex_arg = match func {
            Func::Kind | Func::Filter => Some(0),
            Func::Attr => Some(1),
            _ => None,
        };
        if let Some(i) = regex_arg
            && let Arg::Word(pattern, offset) = &args[i]
        {
            let re = Regex::new(pattern).map_err(|e| {
                self.err(
                    QueryErrorKind::BadRegex {
                        function: func.name(),
                        pattern: pattern.clone(),
                        message: regex_message(&e),
                    },
                    *offset,
                )
            })?;
            self.regexes.insert(*offset, re);
        }
        Ok(Expr::Call(func, args))
    }

    /// `set(a b c)`, after `(`.
    #[inline(never)]
    fn set_call(&mut self) -> Result<Expr, QueryError> {
        let mut atoms = Vec::new();
        loop {
            let (tok, offset) = self.next();
            match tok {
                Tok::RParen => return Ok(Expr::Set(atoms)),
                Tok::Word(w) | Tok::Quoted(w) => atoms.push(self.atom(&w, offset)?),
                other => {
                    return Err(self.err(
                        QueryErrorKind::Expected {
                            expected: "target patterns separated by spaces, then ')'",
                            found: other.to_string(),
                        },
                        offset,
                    ));
                }
            }
        }
    }
}

/// The last line of the regex crate's message (the others repeat the pattern with a caret).
fn regex_message(e: &regex::Error) -> String {
    let s = e.to_string();
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(&s)
        .trim()
        .trim_start_matches("error: ")
        .to_owned()
}

/// The function whose name is closest to `name` (at most 2 edits away).
fn closest(name: &str) -> Option<&'static str> {
    FUNCTIONS
        .iter()
        .map(|f| (edit_distance(name, f), *f))
        .filter(|(d, f)| *d <= 2 && *d < f.len())
        .min()
        .map(|(_, f)| f)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------------------
// Loading

/// The target graph a query needs.
pub struct Loaded {
    pub graph: TargetGraph,
    /// Workspace paths of source files the query names as target patterns (`//pkg:file.c`).
    pub files: Vec<String>,
    /// A dependency cycle among the loaded targets (a [`GraphError::Cycle`]), if one was found:
    /// the query answers anyway, and the caller reports it.
    pub cycle: Option<GraphError>,
}

/// Loads the packages the query's target patterns need (with their dependencies). A pattern
/// that names no package, no target or matches no package is an error at its column.
pub fn load(ws: &Workspace, query: &Query) -> Result<Loaded, QueryError> {
    let mut files: Vec<usize> = Vec::new();
    loop {
        let patterns: Vec<TargetPattern> = (0..query.atoms.len())
            .filter(|i| !files.contains(i))
            .map(|i| query.atoms[i].pattern.clone())
            .collect();
        let result = if patterns.is_empty() {
            Ok((TargetGraph::default(), Vec::new(), None))
        } else {
            crate::load::load_keeping_cycles(ws, &patterns)
        };
        // A pattern's error: the loader matches the patterns before resolving anything, so
        // an error naming exactly what a pattern names is that pattern's.
        let atom_of = |f: &dyn Fn(&TargetPattern) -> bool| {
            (0..query.atoms.len()).find(|i| !files.contains(i) && f(&query.atoms[*i].pattern))
        };
        match result {
            Ok((graph, _, cycle)) => {
                let files = files
                    .iter()
                    .filter_map(|i| match &query.atoms[*i].pattern {
                        TargetPattern::Label(l) => Some(l.path()),
                        TargetPattern::Recursive(_) => None,
                    })
                    .collect();
                return Ok(Loaded {
                    graph,
                    files,
                    cycle,
                });
            }
            Err(GraphError::NotATarget { label, context }) => {
                match atom_of(&|p| names(p, &label)) {
                    // A source file named in a query is a node, as in Bazel (every pattern
                    // naming it: the patterns are loaded again without them).
                    Some(_) => files.extend(
                        (0..query.atoms.len()).filter(|i| names(&query.atoms[*i].pattern, &label)),
                    ),
                    None => {
                        return Err(query.error(
                            QueryErrorKind::Load(GraphError::NotATarget { label, context }),
                            None,
                        ));
                    }
                }
            }
            Err(GraphError::NoSuchTarget { label, context }) => {
                let at = atom_of(&|p| names(p, &label));
                let context = if at.is_some() { String::new() } else { context };
                let e = GraphError::NoSuchTarget { label, context };
                return Err(pattern_error(query, at, e));
            }
            Err(GraphError::NoSuchPackage { package, context }) => {
                let at = atom_of(&|p| matches!(p, TargetPattern::Label(l) if l.package == package));
                let context = if at.is_some() { String::new() } else { context };
                let e = GraphError::NoSuchPackage { package, context };
                return Err(pattern_error(query, at, e));
            }
            Err(GraphError::NoMatch { pattern, dir }) => {
                let at = atom_of(&|p| p.to_string() == pattern);
                return Err(pattern_error(
                    query,
                    at,
                    GraphError::NoMatch { pattern, dir },
                ));
            }
            Err(e) => return Err(query.error(QueryErrorKind::Load(e), None)),
        }
    }
}

fn names(p: &TargetPattern, label: &Label) -> bool {
    matches!(p, TargetPattern::Label(l) if l == label)
}

fn pattern_error(query: &Query, atom: Option<usize>, e: GraphError) -> QueryError {
    match atom {
        Some(i) => query.error(QueryErrorKind::Pattern(e), Some(query.atoms[i].offset)),
        None => query.error(QueryErrorKind::Load(e), None),
    }
}

// ---------------------------------------------------------------------------------------------
// The graph

/// Node index into a [`QueryGraph`].
pub type NodeId = u32;

/// What a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind<'g> {
    Rule(&'g Target),
    SourceFile,
    GeneratedFile,
}

#[derive(Debug)]
struct Node<'g> {
    /// Sort key: toolchain files last, then package, then name.
    external: bool,
    package: String,
    name: String,
    kind: NodeKind<'g>,
}

/// The target graph as query sees it: targets and the files they reference, indexed in label
/// order, with their direct dependencies.
pub struct QueryGraph<'g> {
    nodes: Vec<Node<'g>>,
    /// Forward edges, CSR: the deps of node `i` are `edges[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<u32>,
    edges: Vec<NodeId>,
    reverse: std::sync::OnceLock<(Vec<u32>, Vec<NodeId>)>,
    targets: HashMap<&'g Label, NodeId>,
    /// Workspace path -> file node.
    files: HashMap<String, NodeId>,
}

/// A reference made by a target, before nodes are numbered.
enum Ref<'g> {
    Target(&'g Label),
    File(String),
}

/// Collects a target's references, attribute by attribute.
struct Collect {
    refs: Vec<(String, Dep)>,
}

impl MapRefs<Dep, Label> for Collect {
    type Dep = Dep;
    type Label = Label;
    type Error = std::convert::Infallible;

    fn files(&mut self, attribute: &str, refs: &[Dep]) -> Result<Vec<Dep>, Self::Error> {
        self.refs
            .extend(refs.iter().map(|d| (attribute.to_owned(), d.clone())));
        Ok(Vec::new())
    }

    fn file(&mut self, attribute: &str, r: &Dep) -> Result<Dep, Self::Error> {
        self.refs.push((attribute.to_owned(), r.clone()));
        Ok(r.clone())
    }

    fn target(&mut self, attribute: &str, l: &Label, _want: &Want) -> Result<Label, Self::Error> {
        self.refs
            .push((attribute.to_owned(), Dep::Target(l.clone())));
        Ok(l.clone())
    }

    fn keep<T: Clone + Default>(&mut self, _value: &T) -> T {
        T::default()
    }
}

fn references(rule: &Rule) -> Vec<(String, Dep)> {
    let mut c = Collect { refs: Vec::new() };
    let Ok(_) = rule.map(&mut c);
    c.refs
}

impl<'g> QueryGraph<'g> {
    /// The graph of `graph`'s targets and the files they reference, plus the source files
    /// `extra_files` (workspace paths). `is_package(dir)` says whether a workspace directory
    /// holds a `WBUILD` file: a file belongs to the deepest package above it.
    pub fn new(
        graph: &'g TargetGraph,
        extra_files: &[String],
        is_package: &dyn Fn(&str) -> bool,
    ) -> QueryGraph<'g> {
        // Generated path -> producer.
        let mut outputs: HashMap<String, &'g Label> = HashMap::new();
        for (label, t) in &graph.targets {
            for out in t.rule.outputs(&label.name) {
                outputs.insert(join(&label.package, &out), label);
            }
        }
        let mut refs: Vec<Vec<Ref<'g>>> = Vec::with_capacity(graph.targets.len());
        let mut paths: Vec<String> = extra_files.to_vec();
        for t in graph.targets.values() {
            let mut mine = Vec::new();
            for (_, dep) in references(&t.rule) {
                match dep {
                    Dep::Target(l) => {
                        if let Some((l, _)) = graph.targets.get_key_value(&l) {
                            mine.push(Ref::Target(l));
                        }
                    }
                    Dep::File(p) => {
                        paths.push(p.clone());
                        mine.push(Ref::File(p));
                    }
                }
            }
            refs.push(mine);
        }
        paths.sort_unstable();
        paths.dedup();

        let mut nodes: Vec<Node<'g>> = Vec::with_capacity(graph.targets.len() + paths.len());
        for (label, t) in &graph.targets {
            nodes.push(Node {
                external: false,
                package: label.package.clone(),
                name: label.name.clone(),
                kind: NodeKind::Rule(t),
            });
        }
        let mut package_of_dir: HashMap<String, String> = HashMap::new();
        for p in &paths {
            let (external, package, name, kind) = if let Some(producer) = outputs.get(p) {
                let name = p[producer.package.len()..].trim_start_matches('/');
                (
                    false,
                    producer.package.clone(),
                    name.to_owned(),
                    NodeKind::GeneratedFile,
                )
            } else if let Some(rest) = p.strip_prefix(EXTERNAL_PREFIX) {
                let (tc, path) = rest.split_once('/').unwrap_or((rest, ""));
                (true, tc.to_owned(), path.to_owned(), NodeKind::SourceFile)
            } else {
                let dir = p.rsplit_once('/').map_or("", |(d, _)| d);
                let package = deepest_package(dir, is_package, &mut package_of_dir);
                let name = if package.is_empty() {
                    p.clone()
                } else {
                    p[package.len() + 1..].to_owned()
                };
                (false, package, name, NodeKind::SourceFile)
            };
            nodes.push(Node {
                external,
                package,
                name,
                kind,
            });
        }

        // Number the nodes in label order.
        let n = nodes.len();
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_unstable_by(|a, b| {
            let (a, b) = (&nodes[*a as usize], &nodes[*b as usize]);
            (a.external, &a.package, &a.name).cmp(&(b.external, &b.package, &b.name))
        });
        let mut id_of = vec![0u32; n];
        for (new, old) in order.iter().enumerate() {
            id_of[*old as usize] = new as u32;
        }
        let target_count = graph.targets.len();
        let mut targets = HashMap::with_capacity(target_count);
        for (i, label) in graph.targets.keys().enumerate() {
            targets.insert(label, id_of[i]);
        }
        let mut files = HashMap::with_capacity(paths.len());
        for (i, p) in paths.iter().enumerate() {
            files.insert(p.clone(), id_of[target_count + i]);
        }
        // Edges in the old numbering, then renumbered.
        let mut deps_old: Vec<Vec<NodeId>> = vec![Vec::new(); n];
        for (i, mine) in refs.into_iter().enumerate() {
            let d = &mut deps_old[i];
            for r in mine {
                d.push(match r {
                    Ref::Target(l) => targets[l],
                    Ref::File(p) => files[&p],
                });
            }
        }
        for (i, p) in paths.iter().enumerate() {
            if let Some(producer) = outputs.get(p) {
                deps_old[target_count + i].push(targets[producer]);
            }
        }
        let mut sorted_nodes: Vec<Option<Node<'g>>> = nodes.into_iter().map(Some).collect();
        let mut final_nodes = Vec::with_capacity(n);
        let mut offsets = Vec::with_capacity(n + 1);
        let mut edges = Vec::new();
        offsets.push(0u32);
        for old in &order {
            final_nodes.push(sorted_nodes[*old as usize].take().expect("each node once"));
            let d = &mut deps_old[*old as usize];
            d.sort_unstable();
            d.dedup();
            edges.extend_from_slice(d);
            offsets.push(edges.len() as u32);
        }
        QueryGraph {
            nodes: final_nodes,
            offsets,
            edges,
            reverse: std::sync::OnceLock::new(),
            targets,
            files,
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The label of a node: `//pkg:name`, or `@toolchain//path` for a toolchain file.
    pub fn label(&self, id: NodeId) -> String {
        let n = &self.nodes[id as usize];
        if n.external {
            format!("@{}//{}", n.package, n.name)
        } else {
            format!("//{}:{}", n.package, n.name)
        }
    }

    /// `<rule> rule`, `source file` or `generated file` (what `kind()` matches).
    pub fn kind(&self, id: NodeId) -> String {
        match self.nodes[id as usize].kind {
            NodeKind::Rule(t) => format!("{} rule", t.rule.kind()),
            NodeKind::SourceFile => "source file".to_owned(),
            NodeKind::GeneratedFile => "generated file".to_owned(),
        }
    }

    pub fn node_kind(&self, id: NodeId) -> NodeKind<'g> {
        self.nodes[id as usize].kind
    }

    /// Direct dependencies, in label order.
    pub fn deps(&self, id: NodeId) -> &[NodeId] {
        &self.edges[self.offsets[id as usize] as usize..self.offsets[id as usize + 1] as usize]
    }

    fn rdeps(&self, id: NodeId) -> &[NodeId] {
        let (off, e) = self.reverse.get_or_init(|| {
            let n = self.nodes.len();
            let mut count = vec![0u32; n + 1];
            for &d in &self.edges {
                count[d as usize + 1] += 1;
            }
            for i in 0..n {
                count[i + 1] += count[i];
            }
            let mut fill = count.clone();
            let mut rev = vec![0; self.edges.len()];
            for from in 0..n {
                for &d in self.deps(from as NodeId) {
                    rev[fill[d as usize] as usize] = from as NodeId;
                    fill[d as usize] += 1;
                }
            }
            (count, rev)
        });
        &e[off[id as usize] as usize..off[id as usize + 1] as usize]
    }

    fn is_rule(&self, id: usize) -> bool {
        matches!(self.nodes[id].kind, NodeKind::Rule(_))
    }

    /// The nodes a target pattern stands for, or `None` if it names nothing here.
    fn pattern(&self, pattern: &TargetPattern) -> Option<NodeSet> {
        let mut set = NodeSet::new(self.len());
        match pattern {
            TargetPattern::Label(l) => {
                if let Some(&id) = self.targets.get(l) {
                    set.insert(id);
                } else if let Some(&id) = self.files.get(&l.path()) {
                    set.insert(id);
                } else if matches!(l.name.as_str(), "all" | "*" | "all-targets") {
                    for (i, n) in self.nodes.iter().enumerate() {
                        if self.is_rule(i) && n.package == l.package {
                            set.insert(i as NodeId);
                        }
                    }
                } else {
                    return None;
                }
            }
            TargetPattern::Recursive(prefix) => {
                for (i, n) in self.nodes.iter().enumerate() {
                    if self.is_rule(i)
                        && let Some(rest) = crate::label::strip_package(&n.package, prefix)
                            .or((n.package == *prefix).then_some(""))
                        && !rest.split('/').any(crate::glob::skip_dir)
                    {
                        set.insert(i as NodeId);
                    }
                }
            }
        }
        Some(set)
    }

    /// The attribute `name` of a rule node as text: one string per element of a list (an
    /// empty list is `[]`), `key=value` per entry of a dict, `""` when an optional attribute
    /// is unset; references as labels. `None` if the node has no such attribute.
    pub fn attr(&self, id: NodeId, name: &str) -> Option<Vec<String>> {
        let NodeKind::Rule(t) = self.nodes[id as usize].kind else {
            return None;
        };
        if name == "name" {
            return Some(vec![t.label.name.clone()]);
        }
        // `kind` of cc_* rules is which built-in was called, not an attribute.
        if name == "kind" && matches!(t.rule, Rule::Cc(_)) {
            return None;
        }
        let refs = references(&t.rule);
        if refs.iter().any(|(a, _)| a == name) {
            let values: Vec<String> = refs
                .iter()
                .filter(|(a, _)| a == name)
                .map(|(_, d)| match d {
                    Dep::Target(l) => l.to_string(),
                    Dep::File(p) => match self.files.get(p) {
                        Some(&f) => self.label(f),
                        None => p.clone(),
                    },
                })
                .collect();
            return Some(values);
        }
        let json = serde_json::to_value(&t.rule).ok()?;
        let fields = json.as_object()?.values().next()?.as_object()?;
        let value = fields.get(name)?;
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        Some(match value {
            serde_json::Value::Array(items) if items.is_empty() => vec!["[]".to_owned()],
            serde_json::Value::Array(items) => items.iter().map(text).collect(),
            serde_json::Value::Object(map) if map.is_empty() => vec!["{}".to_owned()],
            serde_json::Value::Object(map) => map
                .iter()
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect(),
            other => vec![text(other)],
        })
    }
}

fn deepest_package(
    dir: &str,
    is_package: &dyn Fn(&str) -> bool,
    memo: &mut HashMap<String, String>,
) -> String {
    if let Some(p) = memo.get(dir) {
        return p.clone();
    }
    let found = if dir.is_empty() || is_package(dir) {
        dir.to_owned()
    } else {
        let parent = dir.rsplit_once('/').map_or("", |(d, _)| d);
        deepest_package(parent, is_package, memo)
    };
    memo.insert(dir.to_owned(), found.clone());
    found
}

// ---------------------------------------------------------------------------------------------
// Sets

/// A set of nodes (a bit set over the node indices; iteration is in label order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSet {
    bits: Vec<u64>,
}

impl NodeSet {
    pub fn new(n: usize) -> NodeSet {
        NodeSet {
            bits: vec![0; n.div_ceil(64)],
        }
    }

    /// Adds `id`; whether it was new.
    pub fn insert(&mut self, id: NodeId) -> bool {
        let (w, b) = (id as usize / 64, 1u64 << (id % 64));
        let new = self.bits[w] & b == 0;
        self.bits[w] |= b;
        new
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.bits[id as usize / 64] & (1u64 << (id % 64)) != 0
    }

    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }

    pub fn iter(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.bits.iter().enumerate().flat_map(|(w, &word)| {
            let mut word = word;
            std::iter::from_fn(move || {
                if word == 0 {
                    return None;
                }
                let b = word.trailing_zeros();
                word &= word - 1;
                Some((w * 64) as NodeId + b)
            })
        })
    }

    fn combine(&mut self, other: &NodeSet, op: SetOp) {
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            *a = match op {
                SetOp::Union => *a | b,
                SetOp::Except => *a & !b,
                SetOp::Intersect => *a & b,
            };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

/// The result of a query.
#[derive(Debug)]
pub struct Evaluation {
    pub nodes: NodeSet,
    /// Dependency cycles met while following dependencies (each starts and ends with the same
    /// node); the result is complete all the same.
    pub cycles: Vec<Vec<NodeId>>,
}

struct Eval<'q, 'g> {
    query: &'q Query,
    graph: &'q QueryGraph<'g>,
    env: Vec<Option<NodeSet>>,
    cycles: Vec<Vec<NodeId>>,
}

#[derive(Copy, Clone, PartialEq, Eq)]
enum Direction {
    Forward,
    Reverse,
}

impl Query {
    /// Evaluates the query over `graph`.
    pub fn evaluate(&self, graph: &QueryGraph<'_>) -> Result<Evaluation, QueryError> {
        let mut e = Eval {
            query: self,
            graph,
            env: vec![None; self.vars.len()],
            cycles: Vec::new(),
        };
        let nodes = e.eval(&self.expr)?;
        Ok(Evaluation {
            nodes,
            cycles: e.cycles,
        })
    }
}

impl Eval<'_, '_> {
    fn eval(&mut self, expr: &Expr) -> Result<NodeSet, QueryError> {
        match expr {
            Expr::Atom(i) => self.atom(*i),
            Expr::Set(atoms) => {
                let mut set = NodeSet::new(self.graph.len());
                for i in atoms {
                    set.combine(&self.atom(*i)?, SetOp::Union);
                }
                Ok(set)
            }
            Expr::Var(v) => Ok(self.env[*v].clone().expect("bound before its body")),
            Expr::Let { var, value, body } => {
                let v = self.eval(value)?;
                self.env[*var] = Some(v);
                self.eval(body)
            }
            Expr::Chain(first, rest) => {
                let mut left = self.eval(first)?;
                for (op, e) in rest {
                    left.combine(&self.eval(e)?, *op);
                }
                Ok(left)
            }
            Expr::Call(func, args) => self.call(*func, args),
        }
    }

    fn atom(&self, i: usize) -> Result<NodeSet, QueryError> {
        let atom = &self.query.atoms[i];
        self.graph.pattern(&atom.pattern).ok_or_else(|| {
            let TargetPattern::Label(label) = &atom.pattern else {
                unreachable!("a recursive pattern always yields a set")
            };
            self.query.error(
                QueryErrorKind::Pattern(GraphError::NoSuchTarget {
                    label: label.clone(),
                    context: String::new(),
                }),
                Some(atom.offset),
            )
        })
    }

    fn call(&mut self, func: Func, args: &[Arg]) -> Result<NodeSet, QueryError> {
        let mut sets = Vec::new();
        let mut words = Vec::new();
        let mut depth = None;
        for a in args {
            match a {
                Arg::Expr(e) => sets.push(self.eval(e)?),
                Arg::Word(w, at) => words.push((w.as_str(), *at)),
                Arg::Depth(d) => depth = Some(*d),
            }
        }
        let g = self.graph;
        let regex = |at: usize| &self.query.regexes[&at];
        Ok(match func {
            Func::Deps => self.closure(&sets[0], Direction::Forward, depth, None),
            Func::Rdeps => {
                let universe = self.closure(&sets[0], Direction::Forward, None, None);
                let mut from = sets[1].clone();
                from.combine(&universe, SetOp::Intersect);
                self.closure(&from, Direction::Reverse, depth, Some(&universe))
            }
            Func::Allpaths => {
                let reach = self.closure(&sets[0], Direction::Forward, None, None);
                let mut to = sets[1].clone();
                to.combine(&reach, SetOp::Intersect);
                self.closure(&to, Direction::Reverse, None, Some(&reach))
            }
            Func::Somepath => self.somepath(&sets[0], &sets[1]),
            Func::Kind => {
                let re = regex(words[0].1);
                filter(&sets[0], |id| re.is_match(&g.kind(id)))
            }
            Func::Filter => {
                let re = regex(words[0].1);
                filter(&sets[0], |id| re.is_match(&g.label(id)))
            }
            Func::Attr => {
                let (name, re) = (words[0].0, regex(words[1].1));
                filter(&sets[0], |id| {
                    g.attr(id, name)
                        .is_some_and(|values| values.iter().any(|v| re.is_match(v)))
                })
            }
            Func::Tests => filter(
                &sets[0],
                |id| matches!(g.node_kind(id), NodeKind::Rule(t) if t.rule.kind().ends_with("_test")),
            ),
        })
    }

    /// Everything reachable from `from` (included) in `dir`, within `within` if given, at
    /// most `depth` edges away. Without a depth, a depth-first walk that notes the first
    /// cycle it meets.
    fn closure(
        &mut self,
        from: &NodeSet,
        dir: Direction,
        depth: Option<usize>,
        within: Option<&NodeSet>,
    ) -> NodeSet {
        let g = self.graph;
        let next = |id: NodeId| match dir {
            Direction::Forward => g.deps(id),
            Direction::Reverse => g.rdeps(id),
        };
        let allowed = |id: NodeId| within.is_none_or(|w| w.contains(id));
        let mut seen = from.clone();
        if let Some(depth) = depth {
            let mut frontier: Vec<NodeId> = from.iter().collect();
            for _ in 0..depth {
                let mut next_frontier = Vec::new();
                for id in frontier {
                    for &d in next(id) {
                        if allowed(d) && seen.insert(d) {
                            next_frontier.push(d);
                        }
                    }
                }
                if next_frontier.is_empty() {
                    break;
                }
                frontier = next_frontier;
            }
            return seen;
        }
        // Iterative DFS; `on_path` marks the nodes of the current path (for cycles).
        let mut done = NodeSet::new(g.len());
        let mut on_path = NodeSet::new(g.len());
        let mut path: Vec<(NodeId, usize)> = Vec::new();
        for root in from.iter() {
            if done.contains(root) {
                continue;
            }
            path.push((root, 0));
            on_path.insert(root);
            seen.insert(root);
            while let Some((id, i)) = path.last_mut() {
                let succ = next(*id);
                if *i == succ.len() {
                    let id = *id;
                    path.pop();
                    on_path.bits[id as usize / 64] &= !(1u64 << (id % 64));
                    done.insert(id);
                    continue;
                }
                let d = succ[*i];
                *i += 1;
                if !allowed(d) || done.contains(d) {
                    continue;
                }
                if on_path.contains(d) {
                    if self.cycles.is_empty() {
                        let start = path.iter().position(|(n, _)| *n == d).unwrap_or(0);
                        let mut cycle: Vec<NodeId> =
                            path[start..].iter().map(|(n, _)| *n).collect();
                        cycle.push(d);
                        if dir == Direction::Reverse {
                            cycle.reverse();
                        }
                        self.cycles.push(cycle);
                    }
                    continue;
                }
                seen.insert(d);
                on_path.insert(d);
                path.push((d, 0));
            }
        }
        seen
    }

    /// The nodes of one shortest path from a node of `from` to a node of `to`.
    fn somepath(&self, from: &NodeSet, to: &NodeSet) -> NodeSet {
        let g = self.graph;
        let mut result = NodeSet::new(g.len());
        let mut parent: HashMap<NodeId, NodeId> = HashMap::new();
        let mut seen = from.clone();
        let mut queue: std::collections::VecDeque<NodeId> = from.iter().collect();
        while let Some(id) = queue.pop_front() {
            if to.contains(id) {
                let mut cur = id;
                result.insert(cur);
                while let Some(&p) = parent.get(&cur) {
                    result.insert(p);
                    cur = p;
                }
                return result;
            }
            for &d in g.deps(id) {
                if seen.insert(d) {
                    parent.insert(d, id);
                    queue.push_back(d);
                }
            }
        }
        result
    }
}

fn filter(set: &NodeSet, keep: impl Fn(NodeId) -> bool) -> NodeSet {
    let mut out = set.clone();
    for id in set.iter() {
        if !keep(id) {
            out.bits[id as usize / 64] &= !(1u64 << (id % 64));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Output

/// How results are printed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// One label per line, in label order.
    Label,
    /// A JSON array of `{"label", "kind", "deps"}` (direct dependencies, in label order).
    Json,
    /// A Graphviz digraph of the result with the edges among its nodes.
    Dot,
}

/// The result is too large to draw.
#[derive(Debug, thiserror::Error)]
#[error(
    "the result has {nodes} nodes, more than --dot-limit {limit}: a graph that size cannot be read; use --output label or json, or a narrower expression (or raise --dot-limit)"
)]
pub struct DotTooLarge {
    pub nodes: usize,
    pub limit: usize,
}

/// The text of the result in `format` (every line ends with a newline; nothing for an empty
/// result with `label`). `dot_limit` bounds the nodes of a `dot` graph.
pub fn render(
    graph: &QueryGraph<'_>,
    set: &NodeSet,
    format: OutputFormat,
    dot_limit: usize,
) -> Result<String, DotTooLarge> {
    use std::fmt::Write;
    let mut out = String::new();
    match format {
        OutputFormat::Label => {
            for id in set.iter() {
                out.push_str(&graph.label(id));
                out.push('\n');
            }
        }
        OutputFormat::Json => {
            #[derive(serde::Serialize)]
            struct Item {
                label: String,
                kind: String,
                deps: Vec<String>,
            }
            let items: Vec<Item> = set
                .iter()
                .map(|id| Item {
                    label: graph.label(id),
                    kind: graph.kind(id),
                    deps: graph.deps(id).iter().map(|d| graph.label(*d)).collect(),
                })
                .collect();
            out = serde_json::to_string_pretty(&items).expect("JSON of strings");
            out.push('\n');
        }
        OutputFormat::Dot => {
            let n = set.len();
            if n > dot_limit {
                return Err(DotTooLarge {
                    nodes: n,
                    limit: dot_limit,
                });
            }
            let q = |id: NodeId| {
                let l = graph.label(id);
                format!("\"{}\"", l.replace('\\', "\\\\").replace('"', "\\\""))
            };
            out.push_str("digraph \"wbuild query\" {\n  node [shape=box];\n");
            for id in set.iter() {
                let _ = writeln!(out, "  {};", q(id));
            }
            for id in set.iter() {
                for &d in graph.deps(id) {
                    if set.contains(d) {
                        let _ = writeln!(out, "  {} -> {};", q(id), q(d));
                    }
                }
            }
            out.push_str("}\n");
        }
    }
    Ok(out)
}

/// A cycle as `a -> b -> a`.
pub fn render_cycle(graph: &QueryGraph<'_>, cycle: &[NodeId]) -> String {
    cycle
        .iter()
        .map(|id| graph.label(*id))
        .collect::<Vec<_>>()
        .join(" -> ")
}

#[cfg(test)]
#[path = "query_tests.rs"]
mod tests;
