//! Pure template logic: vars-file parsing and `{{key}}` substitution. No I/O here.

use std::collections::BTreeMap;
use std::fmt;

/// Keys beginning with this are set by wb-template itself (`wb.template`, `wb.output`).
pub const RESERVED_PREFIX: &str = "wb.";

/// An error with the `file:line` it is about.
#[derive(Debug, PartialEq, Eq)]
pub struct Error {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

fn err(file: &str, line: usize, message: String) -> Error {
    Error {
        file: file.to_string(),
        line,
        message,
    }
}

/// Whether `key` is a valid variable name: ASCII letters, digits, `_`, `.` and `-`.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Parses a vars file: one `key = value` per line; blank lines and lines starting with `#`
/// are ignored. Keys and values are trimmed; a value wrapped in double quotes keeps its inner
/// text verbatim (use this for leading/trailing spaces). Later lines override earlier ones.
pub fn parse_vars(text: &str, file: &str) -> Result<Vec<(String, String)>, Error> {
    let mut vars = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            return Err(err(
                file,
                line_no,
                format!("expected 'key = value', found {trimmed:?}"),
            ));
        };
        let key = key.trim();
        check_key(key).map_err(|m| err(file, line_no, m))?;
        vars.push((key.to_string(), unquote(value.trim()).to_string()));
    }
    Ok(vars)
}

/// Parses a `--set KEY=VALUE` argument (the value is taken verbatim).
pub fn parse_set(arg: &str) -> Result<(String, String), String> {
    let Some((key, value)) = arg.split_once('=') else {
        return Err(format!("--set expects KEY=VALUE, found {arg:?}"));
    };
    check_key(key).map_err(|m| format!("--set {arg:?}: {m}"))?;
    Ok((key.to_string(), value.to_string()))
}

fn check_key(key: &str) -> Result<(), String> {
    if !valid_key(key) {
        return Err(format!(
            "invalid key {key:?} (use letters, digits, '_', '.', '-')"
        ));
    }
    if key.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "key {key:?} is reserved: keys starting with '{RESERVED_PREFIX}' are set by wb-template"
        ));
    }
    Ok(())
}

fn unquote(value: &str) -> &str {
    if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        &value[1..value.len() - 1]
    } else {
        value
    }
}

/// Renders `text` (read from `file`, used in error messages) by replacing every placeholder.
///
/// Placeholders: `{{key}}` or `{{ key }}` is the value of `key`; `{{"text"}}` is `text`
/// literally (write `{{"{{"}}` for a literal `{{`). A placeholder must close on its own line.
pub fn render(text: &str, file: &str, vars: &BTreeMap<String, String>) -> Result<String, Error> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut line = 1;
    while let Some(start) = rest.find("{{") {
        let before = &rest[..start];
        out.push_str(before);
        line += before.matches('\n').count();
        let after_open = &rest[start + 2..];
        let line_end = after_open.find('\n').unwrap_or(after_open.len());
        let Some(close) = after_open[..line_end].find("}}") else {
            return Err(err(
                file,
                line,
                "unterminated '{{' (close it with '}}' on the same line; write {{\"{{\"}} for a literal '{{')".to_string(),
            ));
        };
        let inner = after_open[..close].trim();
        if inner.len() >= 2 && inner.starts_with('"') && inner.ends_with('"') {
            out.push_str(&inner[1..inner.len() - 1]);
        } else if !valid_key(inner) {
            return Err(err(
                file,
                line,
                format!(
                    "invalid placeholder {{{{{inner}}}}} (expected {{{{key}}}} or {{{{\"literal\"}}}})"
                ),
            ));
        } else if let Some(value) = vars.get(inner) {
            out.push_str(value);
        } else {
            let known: Vec<&str> = vars.keys().map(String::as_str).collect();
            return Err(err(
                file,
                line,
                format!(
                    "unknown key '{inner}' (known keys: {}; define it with --set {inner}=VALUE or in a --vars file)",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        rest = &after_open[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn substitutes_keys_with_and_without_spaces() {
        let v = vars(&[("name", "wbuild"), ("version", "1.2")]);
        assert_eq!(
            render("{{name}} v{{ version }}!\n", "t", &v).unwrap(),
            "wbuild v1.2!\n"
        );
    }

    #[test]
    fn text_without_placeholders_is_unchanged() {
        let text = "int main(void) { return 0; }\n}} stray closers are text\n";
        assert_eq!(render(text, "t", &vars(&[])).unwrap(), text);
    }

    #[test]
    fn literal_placeholder_escapes_braces() {
        assert_eq!(
            render("int a[1][1] = {{\"{{\"}}0}};", "t", &vars(&[])).unwrap(),
            "int a[1][1] = {{0}};"
        );
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let v = vars(&[("a", "1")]);
        let e = render("line1\nline2 {{a}}\nx {{missing}}\n", "gen/t.tmpl", &v).unwrap_err();
        assert_eq!(e.file, "gen/t.tmpl");
        assert_eq!(e.line, 3);
        let msg = e.to_string();
        assert!(
            msg.starts_with("gen/t.tmpl:3: unknown key 'missing'"),
            "{msg}"
        );
        assert!(msg.contains("known keys: a"), "{msg}");
        assert!(msg.contains("--set missing=VALUE"), "{msg}");
    }

    #[test]
    fn line_numbers_count_substituted_lines_correctly() {
        // A value containing newlines must not shift the template's line numbers.
        let v = vars(&[("multi", "a\nb\nc")]);
        let e = render("{{multi}}\n{{nope}}", "t", &v).unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn unterminated_and_invalid_placeholders_are_errors() {
        let e = render("ok\n{{name\n}}", "t", &vars(&[])).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("unterminated"), "{}", e.message);
        let e = render("{{a b}}", "t", &vars(&[])).unwrap_err();
        assert!(e.message.contains("invalid placeholder"), "{}", e.message);
    }

    #[test]
    fn parses_vars_files() {
        let text = "# comment\n\nname = wbuild\n  version=1.2  \nquoted = \"  x  \"\nurl = http://a/#frag\nname = again\n";
        let parsed = parse_vars(text, "v.vars").unwrap();
        assert_eq!(
            parsed,
            vec![
                ("name".to_string(), "wbuild".to_string()),
                ("version".to_string(), "1.2".to_string()),
                ("quoted".to_string(), "  x  ".to_string()),
                ("url".to_string(), "http://a/#frag".to_string()),
                ("name".to_string(), "again".to_string()),
            ]
        );
    }

    #[test]
    fn bad_vars_lines_name_file_and_line() {
        let e = parse_vars("a = 1\nnot a pair\n", "p.vars").unwrap_err();
        assert_eq!(
            e.to_string(),
            "p.vars:2: expected 'key = value', found \"not a pair\""
        );
        let e = parse_vars("bad key = 1\n", "p.vars").unwrap_err();
        assert!(e.to_string().starts_with("p.vars:1: invalid key"), "{e}");
        let e = parse_vars("wb.template = x\n", "p.vars").unwrap_err();
        assert!(e.message.contains("reserved"), "{e}");
    }

    #[test]
    fn parses_set_arguments() {
        assert_eq!(
            parse_set("k=a=b").unwrap(),
            ("k".to_string(), "a=b".to_string())
        );
        assert_eq!(parse_set("k=").unwrap(), ("k".to_string(), String::new()));
        assert!(parse_set("novalue").is_err());
        assert!(parse_set("=x").is_err());
    }
}
