//! The TOML weir import writes: tables in the file's order, each with a comment naming the
//! HAProxy lines it came from, values inline (`servers = [ { ... }, ... ]` one a line).

use std::fmt::Write;

/// A value as written in weir's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<V>),
    Table(Vec<(String, V)>),
}

impl V {
    pub fn str(s: impl Into<String>) -> V {
        V::Str(s.into())
    }

    pub fn strs<S: Into<String>>(items: impl IntoIterator<Item = S>) -> V {
        V::List(items.into_iter().map(|s| V::Str(s.into())).collect())
    }

    /// A table from pairs.
    pub fn table<K: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> V {
        V::Table(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// One item written alone, a list of several.
    pub fn one_or_list(mut items: Vec<V>) -> V {
        if items.len() == 1 {
            items.remove(0)
        } else {
            V::List(items)
        }
    }
}

/// A key, bare when it can be.
pub fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_owned()
    } else {
        quote(k)
    }
}

/// A TOML basic string.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A value on one line.
pub fn inline(v: &V) -> String {
    match v {
        V::Str(s) => quote(s),
        V::Int(i) => i.to_string(),
        V::Bool(b) => b.to_string(),
        V::List(items) => {
            let parts: Vec<String> = items.iter().map(inline).collect();
            format!("[{}]", parts.join(", "))
        }
        V::Table(pairs) if pairs.is_empty() => "{}".to_owned(),
        V::Table(pairs) => {
            let parts: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{} = {}", key(k), inline(v)))
                .collect();
            format!("{{ {} }}", parts.join(", "))
        }
    }
}

/// A value after `key = `: a list of tables one item a line, anything else inline.
fn value(v: &V, indent: &str) -> String {
    match v {
        V::List(items) if items.iter().any(|i| matches!(i, V::Table(_))) => {
            let mut out = String::from("[\n");
            for i in items {
                let _ = writeln!(out, "{indent}  {},", inline(i));
            }
            out.push_str(indent);
            out.push(']');
            out
        }
        V::Table(pairs)
            if pairs.iter().any(|(_, v)| {
                matches!(v, V::List(items) if items.iter().any(|i| matches!(i, V::Table(_))))
            }) =>
        {
            // A plugin's config with a list of rules: the rules one a line.
            let parts: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{} = {}", key(k), value(v, indent)))
                .collect();
            format!("{{ {} }}", parts.join(", "))
        }
        v => inline(v),
    }
}

/// One table of the output: a comment, its header, its keys.
#[derive(Debug, Clone)]
pub struct Block {
    pub comment: String,
    pub header: String,
    pub entries: Vec<(String, V)>,
}

impl Block {
    pub fn new(comment: impl Into<String>, header: impl Into<String>) -> Block {
        Block {
            comment: comment.into(),
            header: header.into(),
            entries: Vec::new(),
        }
    }

    pub fn has(&self, k: &str) -> bool {
        self.entries.iter().any(|(e, _)| e == k)
    }

    pub fn set(&mut self, k: &str, v: V) {
        self.entries.retain(|(e, _)| e != k);
        self.entries.push((k.to_owned(), v));
    }

    pub fn render(&self, out: &mut String) {
        for line in self.comment.lines() {
            // A comment holds no control characters (names may, through escapes).
            let line: String = line
                .chars()
                .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
                .collect();
            let _ = writeln!(out, "# {line}");
        }
        let _ = writeln!(out, "{}", self.header);
        for (k, v) in &self.entries {
            let _ = writeln!(out, "{} = {}", key(k), value(v, ""));
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_written_as_weirs_config_reads_them() {
        assert_eq!(quote("a\"b\\c\u{1}"), r#""a\"b\\c\u0001""#);
        assert_eq!(key("max_idle"), "max_idle");
        assert_eq!(key("x.y"), "\"x.y\"");
        let t = V::table([("name", V::str("s1")), ("weight", V::Int(2))]);
        assert_eq!(inline(&t), r#"{ name = "s1", weight = 2 }"#);
        let mut b = Block::new("backend app (lines 3-5)", "[backend.app]");
        b.set("servers", V::List(vec![t]));
        let mut out = String::new();
        b.render(&mut out);
        assert_eq!(
            out,
            "# backend app (lines 3-5)\n[backend.app]\nservers = [\n  { name = \"s1\", weight = 2 },\n]\n\n"
        );
        let parsed: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(
            parsed["backend"]["app"]["servers"][0]["weight"].as_integer(),
            Some(2)
        );
    }
}
