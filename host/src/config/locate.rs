//! Maps between key paths (`backend.app.servers[1].addr`) and places in the TOML text, so
//! that every config error names both the key path and the line.

use std::fmt;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path to a key of the config file, rendered the way TOML users read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        Self(Vec::new())
    }
    pub fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        Self(segs)
    }
    pub fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        Self(segs)
    }
    pub fn segments(&self) -> &[Seg] {
        &self.0
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// The parsed document with spans, kept beside the serde structs only to find places.
pub struct Locator<'a> {
    text: &'a str,
    root: Option<Spanned<DeTable<'a>>>,
}

impl<'a> Locator<'a> {
    pub fn new(text: &'a str) -> Self {
        Self {
            text,
            root: DeTable::parse(text).ok(),
        }
    }

    /// 1-based line of a byte offset.
    pub fn line_of_offset(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The line where the value at `path` is written; for a path that is not in the file
    /// (a missing key), the line of its nearest written parent.
    pub fn line_of(&self, path: &KeyPath) -> Option<usize> {
        let root = self.root.as_ref()?;
        let mut span: Option<Range<usize>> = None;
        let mut table = Some(root.get_ref());
        let mut value: Option<&Spanned<DeValue<'a>>> = None;
        for seg in path.segments() {
            let next = match (seg, table, value.map(|v| v.get_ref())) {
                (Seg::Key(k), Some(t), _) => {
                    t.iter()
                        .find(|(key, _)| key.get_ref() == k)
                        .map(|(key, v)| {
                            span = Some(key.span());
                            v
                        })
                }
                (Seg::Index(i), _, Some(DeValue::Array(items))) => items.get(*i),
                _ => None,
            };
            let Some(next) = next else { break };
            if !matches!(seg, Seg::Key(_))
                || !matches!(next.get_ref(), DeValue::Table(_) | DeValue::Array(_))
            {
                span = Some(next.span());
            }
            table = match next.get_ref() {
                DeValue::Table(t) => Some(t),
                _ => None,
            };
            value = Some(next);
        }
        span.map(|s| self.line_of_offset(s.start))
    }

    /// The deepest key path whose key or value covers `offset`, for errors that come with
    /// a span but no path (unknown keys, wrong types).
    pub fn path_at(&self, offset: usize) -> KeyPath {
        let mut best = (KeyPath::root(), usize::MAX);
        if let Some(root) = &self.root {
            walk_table(root.get_ref(), &KeyPath::root(), offset, &mut best);
        }
        best.0
    }
}

fn covers(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

fn consider(path: &KeyPath, span: &Range<usize>, offset: usize, best: &mut (KeyPath, usize)) {
    let len = span.end.saturating_sub(span.start);
    if covers(span, offset) && len <= best.1 {
        *best = (path.clone(), len);
    }
}

fn walk_table(table: &DeTable<'_>, path: &KeyPath, offset: usize, best: &mut (KeyPath, usize)) {
    for (key, value) in table.iter() {
        let child = path.key(key.get_ref());
        consider(&child, &key.span(), offset, best);
        walk_value(value, &child, offset, best);
    }
}

fn walk_value(
    value: &Spanned<DeValue<'_>>,
    path: &KeyPath,
    offset: usize,
    best: &mut (KeyPath, usize),
) {
    consider(path, &value.span(), offset, best);
    match value.get_ref() {
        DeValue::Table(t) => walk_table(t, path, offset, best),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_value(item, &path.index(i), offset, best);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"[global]
maxconn = 10

[[frontend]]
name = "www"
bind = ["127.0.0.1:1", "127.0.0.1:2"]

[backend.app]
servers = [
  { name = "a", addr = "127.0.0.1:9001" },
  { name = "b", addr = "127.0.0.1:99999" },
]
"#;

    #[test]
    fn paths_render_like_toml() {
        let p = KeyPath::root()
            .key("backend")
            .key("app")
            .key("servers")
            .index(1)
            .key("addr");
        assert_eq!(p.to_string(), "backend.app.servers[1].addr");
        assert_eq!(
            KeyPath::root().key("backend").key("a b").to_string(),
            "backend.\"a b\""
        );
    }

    #[test]
    fn line_of_finds_nested_values() {
        let loc = Locator::new(DOC);
        let p = KeyPath::root()
            .key("backend")
            .key("app")
            .key("servers")
            .index(1)
            .key("addr");
        assert_eq!(loc.line_of(&p), Some(11));
        assert_eq!(
            loc.line_of(&KeyPath::root().key("global").key("maxconn")),
            Some(2)
        );
        let bind = KeyPath::root()
            .key("frontend")
            .index(0)
            .key("bind")
            .index(1);
        assert_eq!(loc.line_of(&bind), Some(6));
    }

    #[test]
    fn path_at_finds_the_deepest_key() {
        let loc = Locator::new(DOC);
        let offset = DOC.find("99999").unwrap();
        assert_eq!(
            loc.path_at(offset).to_string(),
            "backend.app.servers[1].addr"
        );
        let offset = DOC.find("maxconn").unwrap();
        assert_eq!(loc.path_at(offset).to_string(), "global.maxconn");
    }
}
