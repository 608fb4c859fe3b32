//! HAProxy's configuration syntax, read as HAProxy reads it: lines of words separated by
//! blanks; `#` starts a comment; double quotes keep blanks and expand `${VAR}`, single
//! quotes keep everything as written; a backslash escapes the next character (`\ `,
//! `\#`, `\\`, `\"`, `\'`, `\$`) and `\r`, `\n`, `\t`, `\xNN` stand for their bytes;
//! `${VAR}` outside single quotes is the environment variable's value. A section starts
//! with its keyword (`global`, `defaults`, `frontend`, ...) and holds the lines up to the
//! next one.

/// One line of words, with its number and its text as written (for the report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub no: usize,
    pub words: Vec<String>,
    pub text: String,
}

impl Line {
    pub fn word(&self, i: usize) -> &str {
        self.words.get(i).map_or("", String::as_str)
    }

    /// The words from the `i`-th on (none past the end).
    pub fn from(&self, i: usize) -> &[String] {
        self.words.get(i..).unwrap_or(&[])
    }
}

/// A section: its keyword, its name (if any) and its lines, the header first.
#[derive(Debug, Clone)]
pub struct Section {
    pub kind: String,
    pub name: String,
    pub header: Line,
    pub lines: Vec<Line>,
}

impl Section {
    /// The first line number and the last.
    pub fn span(&self) -> (usize, usize) {
        let last = self.lines.last().map_or(self.header.no, |l| l.no);
        (self.header.no, last)
    }
}

/// The section keywords HAProxy knows.
pub const SECTIONS: [&str; 16] = [
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "userlist",
    "peers",
    "resolvers",
    "mailers",
    "cache",
    "program",
    "http-errors",
    "ring",
    "log-forward",
    "crt-store",
    "traces",
];

/// A file HAProxy would refuse to read, at `line`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// The file's sections. `env` looks variables up.
pub fn sections(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Section>, SyntaxError> {
    let mut out: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        if raw.contains('\0') {
            return Err(SyntaxError {
                line: no,
                message: "a NUL byte: this is not a text configuration".into(),
            });
        }
        let words = words(raw, env).map_err(|message| SyntaxError { line: no, message })?;
        if words.is_empty() {
            continue;
        }
        let line = Line {
            no,
            text: raw.trim().to_owned(),
            words,
        };
        if SECTIONS.contains(&line.words[0].as_str()) {
            out.push(Section {
                kind: line.words[0].clone(),
                name: line.word(1).to_owned(),
                header: line,
                lines: Vec::new(),
            });
        } else if let Some(section) = out.last_mut() {
            section.lines.push(line);
        } else {
            return Err(SyntaxError {
                line: no,
                message: format!(
                    "\"{}\" outside any section (a file starts with global, defaults, frontend, backend, listen, ...)",
                    line.words[0]
                ),
            });
        }
    }
    Ok(out)
}

/// The words of one line.
pub fn words(line: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\r' => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '#' => break,
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        None => return Err("unterminated double quote".into()),
                        Some('"') => break,
                        Some('\\') => w.push_str(&escape(&mut chars)?),
                        Some('$') if chars.peek() == Some(&'{') => {
                            w.push_str(&variable(&mut chars, env)?)
                        }
                        Some(c) => w.push(c),
                    }
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        None => return Err("unterminated single quote".into()),
                        Some('\'') => break,
                        Some(c) => w.push(c),
                    }
                }
            }
            '\\' => {
                let e = escape(&mut chars)?;
                word.get_or_insert_with(String::new).push_str(&e);
            }
            '$' if chars.peek() == Some(&'{') => {
                let v = variable(&mut chars, env)?;
                word.get_or_insert_with(String::new).push_str(&v);
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = word {
        words.push(w);
    }
    Ok(words)
}

fn escape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<String, String> {
    Ok(match chars.next() {
        None => return Err("a backslash at the end of the line".into()),
        Some('r') => "\r".into(),
        Some('n') => "\n".into(),
        Some('t') => "\t".into(),
        Some('x') => {
            let hex: String = [chars.next(), chars.next()].into_iter().flatten().collect();
            let byte = u8::from_str_radix(&hex, 16)
                .map_err(|_| format!("\\x needs two hexadecimal digits, got \"{hex}\""))?;
            char::from(byte).to_string()
        }
        Some(c) => c.to_string(),
    })
}

/// `${NAME}` (the `$` read already): its value, empty when unset as in HAProxy.
fn variable(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    chars.next();
    let mut name = String::new();
    loop {
        match chars.next() {
            None => return Err("unterminated ${...}".into()),
            Some('}') => break,
            Some(c) => name.push(c),
        }
    }
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "\"${{{name}}}\" is not an environment variable's name"
        ));
    }
    Ok(env(&name).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "PORT").then(|| "8080".to_owned())
    }

    fn w(line: &str) -> Vec<String> {
        words(line, &env).unwrap()
    }

    #[test]
    fn words_follow_haproxys_quoting_escapes_and_variables() {
        assert_eq!(w("  bind :80  # a comment"), ["bind", ":80"]);
        assert_eq!(w(r#"bind ":${PORT}""#), ["bind", ":8080"]);
        assert_eq!(w("bind :${PORT}"), ["bind", ":8080"]);
        assert_eq!(w(r"bind '${PORT}'"), ["bind", "${PORT}"]);
        assert_eq!(
            w(r#"http-response set-header X-A "a b\"c""#),
            ["http-response", "set-header", "X-A", "a b\"c"]
        );
        assert_eq!(
            w(r"acl a path_beg /a\ b \#x"),
            ["acl", "a", "path_beg", "/a b", "#x"]
        );
        assert_eq!(w(r"x \x41"), ["x", "A"]);
        assert_eq!(w(r#"x a"b"c"#), ["x", "abc"]);
        assert_eq!(w(r#"x """#), ["x", ""]);
        assert_eq!(w("x ${UNSET}y"), ["x", "y"]);
    }

    #[test]
    fn broken_lines_are_refused_with_their_number() {
        assert!(
            words(r#"x "open"#, &env)
                .unwrap_err()
                .contains("double quote")
        );
        assert!(words("x 'open", &env).unwrap_err().contains("single quote"));
        assert!(words("x ${OPEN", &env).unwrap_err().contains("${"));
        assert!(words(r"x \", &env).unwrap_err().contains("backslash"));
        let e = sections("bind :80\n", &env).unwrap_err();
        assert_eq!(e.line, 1);
        let e = sections("global\n  maxconn 10\nfrontend a\n  x \"y\n", &env).unwrap_err();
        assert_eq!(e.line, 4);
    }

    #[test]
    fn sections_hold_their_lines() {
        let s = sections(
            "# top\nglobal\n  maxconn 10\n\nfrontend www\n  bind :80\nbackend app\n",
            &env,
        )
        .unwrap();
        let kinds: Vec<(&str, &str, usize)> = s
            .iter()
            .map(|s| (s.kind.as_str(), s.name.as_str(), s.lines.len()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("global", "", 1),
                ("frontend", "www", 1),
                ("backend", "app", 0)
            ]
        );
        assert_eq!(s[1].span(), (5, 6));
    }
}
