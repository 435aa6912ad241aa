//! The declarative subset of `WBUILD` files, read without Starlark's parser and compiler.
//!
//! Most build files are nothing but rule calls whose keyword arguments are literals:
//!
//! ```text
//! # A comment.
//! cc_library(
//!     name = "lib",
//!     srcs = ["a.c", "b.c"],  # another
//!     copts = ["-O2"],
//! )
//! ```
//!
//! Lexing, parsing and compiling such a file was most of the time Starlark spent on it (a cold
//! load of 100,000 targets). [`calls`] reads a file that is exactly this shape into its calls,
//! and the evaluator calls the same built-in functions with the same values Starlark would
//! have (see `eval::Interpreter::eval_package`). Anything else — a `load()`, an assignment, an
//! expression, a positional argument, a string with a backslash or in triple quotes, a
//! statement not at the start of its line, a `;`, a tab outside a string or comment, a carriage
//! return anywhere — makes [`calls`] return `None`, and the file
//! is evaluated by Starlark, which also reports every error (a call that fails here is
//! evaluated again there).

/// A literal argument value.
#[derive(Debug, PartialEq)]
pub(crate) enum Lit<'a> {
    /// A string literal's text (it holds no escape).
    Str(&'a str),
    Int(i32),
    Bool(bool),
    None,
    List(Vec<Lit<'a>>),
    /// Entries in written order, keys distinct.
    Dict(Vec<(&'a str, Lit<'a>)>),
}

/// One top-level call: `function(name = value, ...)`.
#[derive(Debug, PartialEq)]
pub(crate) struct Call<'a> {
    pub function: &'a str,
    /// The line the call starts on (1-based; it starts in column 1).
    pub line: u32,
    pub kwargs: Vec<(&'a str, Lit<'a>)>,
}

/// The calls of `text` if it is only top-level calls with literal keyword arguments (and
/// blank lines and comments); `None` for anything else.
pub(crate) fn calls(text: &str) -> Option<Vec<Call<'_>>> {
    let mut r = Reader {
        s: text.as_bytes(),
        text,
        pos: 0,
        line: 1,
    };
    let mut out = Vec::new();
    loop {
        match r.peek() {
            None => return Some(out),
            Some(b'\n') => r.newline(),
            Some(b'#') => r.comment(),
            // Only a blank or comment line may start with white space.
            Some(b' ') => {
                r.spaces();
                match r.peek() {
                    None => return Some(out),
                    Some(b'\n') => r.newline(),
                    Some(b'#') => r.comment(),
                    _ => return None,
                }
            }
            Some(c) if is_ident_start(c) => {
                out.push(r.call()?);
                // The rest of the line: white space and a comment.
                r.spaces();
                match r.peek() {
                    None => return Some(out),
                    Some(b'\n') => r.newline(),
                    Some(b'#') => r.comment(),
                    _ => return None,
                }
            }
            _ => return None,
        }
    }
}

struct Reader<'a> {
    s: &'a [u8],
    text: &'a str,
    pos: usize,
    line: u32,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Whether a name occurs twice (found by sorting, not by comparing every pair, so a call or
/// dict of thousands of entries stays cheap).
fn repeats<'a>(names: impl Iterator<Item = &'a str>) -> bool {
    let mut names: Vec<&str> = names.collect();
    names.sort_unstable();
    names.windows(2).any(|w| w[0] == w[1])
}

/// The call, unless a keyword argument is repeated (left to Starlark).
fn distinct<'a>(function: &'a str, line: u32, kwargs: Vec<(&'a str, Lit<'a>)>) -> Option<Call<'a>> {
    (!repeats(kwargs.iter().map(|(k, _)| *k))).then_some(Call {
        function,
        line,
        kwargs,
    })
}

/// Whether `name` is one of Starlark's keywords or the Python keywords it reserves: never a
/// name here. (A `match`: comparing each name with a list of them was most of reading.)
fn is_keyword(name: &str) -> bool {
    matches!(
        name,
        "and"
            | "as"
            | "assert"
            | "async"
            | "await"
            | "break"
            | "class"
            | "continue"
            | "def"
            | "del"
            | "elif"
            | "else"
            | "except"
            | "finally"
            | "for"
            | "from"
            | "global"
            | "if"
            | "import"
            | "in"
            | "is"
            | "lambda"
            | "load"
            | "nonlocal"
            | "not"
            | "or"
            | "pass"
            | "raise"
            | "return"
            | "try"
            | "while"
            | "with"
            | "yield"
    )
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn newline(&mut self) {
        self.pos += 1;
        self.line += 1;
    }

    /// Spaces. A tab, carriage return or form feed is left for the caller to refuse (Starlark
    /// refuses a tab anywhere but in a string or comment).
    fn spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    /// From `#` to the end of the line (not past it), or to a carriage return, which
    /// Starlark refuses even in a comment (left for the caller to refuse).
    fn comment(&mut self) {
        while !matches!(self.peek(), None | Some(b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// White space, line ends and comments (inside brackets).
    fn trivia(&mut self) {
        loop {
            match self.peek() {
                Some(b' ') => self.pos += 1,
                Some(b'\n') => self.newline(),
                Some(b'#') => self.comment(),
                _ => return,
            }
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek() == Some(c)).then(|| self.pos += 1)
    }

    /// A name that is not a keyword.
    fn ident(&mut self) -> Option<&'a str> {
        self.ident_any().filter(|name| !is_keyword(name))
    }

    fn call(&mut self) -> Option<Call<'a>> {
        let line = self.line;
        let function = self.ident()?;
        self.spaces();
        self.eat(b'(')?;
        let mut kwargs: Vec<(&str, Lit)> = Vec::new();
        loop {
            self.trivia();
            if self.eat(b')').is_some() {
                return distinct(function, line, kwargs);
            }
            let name = self.ident()?;
            self.trivia();
            self.eat(b'=')?;
            // `==` is a comparison, a positional argument.
            if self.peek() == Some(b'=') {
                return None;
            }
            self.trivia();
            let value = self.literal()?;
            kwargs.push((name, value));
            self.trivia();
            if self.eat(b',').is_none() {
                self.trivia();
                self.eat(b')')?;
                return distinct(function, line, kwargs);
            }
        }
    }

    fn literal(&mut self) -> Option<Lit<'a>> {
        let lit = match self.peek()? {
            b'"' | b'\'' => Lit::Str(self.string()?),
            b'[' => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.trivia();
                    if self.eat(b']').is_some() {
                        break;
                    }
                    items.push(self.literal()?);
                    self.trivia();
                    if self.eat(b',').is_none() {
                        self.trivia();
                        self.eat(b']')?;
                        break;
                    }
                }
                Lit::List(items)
            }
            b'{' => {
                self.pos += 1;
                let mut entries: Vec<(&str, Lit)> = Vec::new();
                loop {
                    self.trivia();
                    if self.eat(b'}').is_some() {
                        break;
                    }
                    if !matches!(self.peek(), Some(b'"' | b'\'')) {
                        return None;
                    }
                    let key = self.string()?;
                    self.trivia();
                    self.eat(b':')?;
                    self.trivia();
                    let value = self.literal()?;
                    entries.push((key, value));
                    self.trivia();
                    if self.eat(b',').is_none() {
                        self.trivia();
                        self.eat(b'}')?;
                        break;
                    }
                }
                // A repeated key: left to Starlark.
                if repeats(entries.iter().map(|(k, _)| *k)) {
                    return None;
                }
                Lit::Dict(entries)
            }
            b'0'..=b'9' => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.pos += 1;
                }
                let digits = &self.text[start..self.pos];
                // `0x1`, `1.5`, `1e3`, `1j`, a leading zero: left to Starlark.
                if (digits.len() > 1 && digits.starts_with('0'))
                    || self.peek().is_some_and(|c| is_ident(c) || c == b'.')
                {
                    return None;
                }
                Lit::Int(digits.parse().ok()?)
            }
            _ => match self.ident_any()? {
                "True" => Lit::Bool(true),
                "False" => Lit::Bool(false),
                "None" => Lit::None,
                _ => return None,
            },
        };
        Some(lit)
    }

    /// A name, keyword or not.
    fn ident_any(&mut self) -> Option<&'a str> {
        let start = self.pos;
        if !self.peek().is_some_and(is_ident_start) {
            return None;
        }
        while self.peek().is_some_and(is_ident) {
            self.pos += 1;
        }
        Some(&self.text[start..self.pos])
    }

    /// A one-line string literal in single or double quotes holding no backslash.
    fn string(&mut self) -> Option<&'a str> {
        let quote = self.peek()?;
        self.pos += 1;
        let start = self.pos;
        // `""` followed by a quote opens a triple-quoted string.
        if self.peek() == Some(quote) && self.s.get(self.pos + 1) == Some(&quote) {
            return None;
        }
        loop {
            match self.peek()? {
                c if c == quote => break,
                b'\\' | b'\n' | b'\r' => return None,
                _ => self.pos += 1,
            }
        }
        let text = &self.text[start..self.pos];
        self.pos += 1;
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rule_calls_with_literal_keyword_arguments() {
        let text = "# top\n\ncc_library(\n    name = \"lib\",  # the name\n    srcs = ['a.c', \"b.c\",],\n    env = {\"A\": \"1\", 'B': ''},\n    n = 0, big = 2147483647, t = True, f = False, x = None,\n)\n  # indented comment\nfilegroup(name=\"g\", srcs=[])   # trailing\nf ()\n";
        let calls = calls(text).expect("the subset");
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].function, "cc_library");
        assert_eq!(calls[0].line, 3);
        assert_eq!(
            calls[0].kwargs,
            vec![
                ("name", Lit::Str("lib")),
                ("srcs", Lit::List(vec![Lit::Str("a.c"), Lit::Str("b.c")])),
                (
                    "env",
                    Lit::Dict(vec![("A", Lit::Str("1")), ("B", Lit::Str(""))])
                ),
                ("n", Lit::Int(0)),
                ("big", Lit::Int(i32::MAX)),
                ("t", Lit::Bool(true)),
                ("f", Lit::Bool(false)),
                ("x", Lit::None),
            ]
        );
        assert_eq!((calls[1].function, calls[1].line), ("filegroup", 10));
        assert_eq!((calls[2].function, calls[2].line), ("f", 11));
        // A large dict is read; the same with one key repeated is left to Starlark.
        let entries: Vec<String> = (0..5000).map(|i| format!("\"k{i}\": \"v\"")).collect();
        let big = format!("f(env = {{{}}})\n", entries.join(", "));
        let Lit::Dict(read) = &super::calls(&big).unwrap()[0].kwargs[0].1 else {
            panic!("not a dict")
        };
        assert_eq!(read.len(), 5000);
        let repeated = format!("f(env = {{{}, \"k17\": \"w\"}})\n", entries.join(", "));
        assert!(super::calls(&repeated).is_none());
        // So is a call of many keyword arguments, and the same with one repeated.
        let args: Vec<String> = (0..5000).map(|i| format!("a{i} = 1")).collect();
        let many = format!("f({})\n", args.join(", "));
        assert_eq!(super::calls(&many).unwrap()[0].kwargs.len(), 5000);
        assert!(super::calls(&format!("f({}, a4999 = 2)\n", args.join(", "))).is_none());
        assert_eq!(super::calls("").unwrap(), vec![]);
        assert_eq!(super::calls("\n  \n# c").unwrap(), vec![]);
    }

    #[test]
    fn anything_else_is_left_to_starlark() {
        for text in [
            "load(\"//a:b.bzl\", \"m\")\n",
            "x = 1\n",
            "f(name = \"a\" + \"b\")\n",
            "f(\"positional\")\n",
            "f(name = 'a\\n')\n",
            "f(name = \"\"\"a\"\"\")\n",
            "f(name = '''a''')\n",
            "f(name = r\"a\")\n",
            "f(name = \"a\nb\")\n",
            " f(name = \"a\")\n",
            "\tf(name = \"a\")\n",
            // Starlark refuses a tab anywhere but in a string or comment, and a carriage
            // return even in a comment (both found by the mutation test in `eval`).
            "f(\n\tname = \"a\")\n",
            "f(name =\t\"a\")\n",
            "f(name = \"a\")\t\n",
            "\t\nf(name = \"a\")\n",
            "f(name = \"a\")  # c\r\n",
            "f(name = \"a\",  # c\r srcs = [])\n",
            "f(name = \"a\"); g(name = \"b\")\n",
            "f(name = \"a\") g()\n",
            "f(name = \"a\", name = \"b\")\n",
            "f(env = {\"a\": \"1\", \"a\": \"2\"})\n",
            "f(env = {\"a\": \"1\", \"b\": \"2\", \"c\": \"3\", \"a\": \"4\"})\n",
            "f(env = {1: \"1\"})\n",
            "f(n = 012)\n",
            "f(n = 1.5)\n",
            "f(n = 0x1)\n",
            "f(n = -1)\n",
            "f(n = 2147483648)\n",
            "f(srcs = glob([\"*.c\"]))\n",
            "f(srcs = (\"a\",))\n",
            "f(x = y)\n",
            "f(x == 1)\n",
            "f(**kw)\n",
            "if(x = 1)\n",
            "f(for = 1)\n",
            "f(name = \"a\")\r\n",
            "f(name = \"a\"\n",
            "f(name = \"a\",,)\n",
            "f\n(name = \"a\")\n",
            "f.g(name = \"a\")\n",
            "f(name = \"a\")[0]\n",
            "def f():\n    pass\n",
            "\"docstring\"\n",
            "f(name = \"é\") \\\n",
        ] {
            assert!(super::calls(text).is_none(), "{text:?}");
        }
    }
}
