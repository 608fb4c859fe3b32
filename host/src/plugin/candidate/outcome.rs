//! What a shadow call is given, owned for the shadow thread, and what the two versions
//! decided, in a form that compares.

use super::super::validate::Edit;
use super::super::{RequestDecision, RequestInfo, ResponseDecision, ResponseInfo};

/// Strings copied one after another into a single allocation: what the request's path
/// pays for a shadow call's inputs is one allocation, however many fields it copies.
struct Packed<const N: usize> {
    text: String,
    /// Where each string ends in `text`.
    ends: [u32; N],
    /// Bit `i` set: string `i` is there (an absent one reads as None).
    present: u32,
}

impl<const N: usize> Packed<N> {
    fn new(strings: [Option<&str>; N]) -> Self {
        let mut text = String::with_capacity(strings.iter().flatten().map(|s| s.len()).sum());
        let mut ends = [0; N];
        let mut present = 0;
        for (i, s) in strings.iter().enumerate() {
            if let Some(s) = s {
                text.push_str(s);
                present |= 1 << i;
            }
            ends[i] = text.len() as u32;
        }
        Packed {
            text,
            ends,
            present,
        }
    }

    fn get(&self, i: usize) -> Option<&str> {
        if self.present & (1 << i) == 0 {
            return None;
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.text[start as usize..self.ends[i] as usize])
    }

    fn str(&self, i: usize) -> &str {
        self.get(i).unwrap_or("")
    }
}

/// A request's fields, owned, for the candidate's task: method, path, query, host, client
/// address, frontend, scheme and backend, in that order.
pub(super) struct OwnedRequest(Packed<8>);

impl OwnedRequest {
    /// The fields of `r` in `read` (the ones the candidate declared), and its method and
    /// path (for the sample); the others stay empty, as the candidate would see them.
    pub(super) fn of(r: &RequestInfo<'_>, read: super::super::types::RequestFields) -> Self {
        use super::super::types::RequestFields as F;
        let read_as = |flag: F| read.contains(flag);
        OwnedRequest(Packed::new([
            Some(r.method),
            Some(r.path),
            r.query.filter(|_| read_as(F::QUERY)),
            r.host.filter(|_| read_as(F::HOST)),
            read_as(F::CLIENT_IP).then_some(r.client_ip),
            read_as(F::FRONTEND).then_some(r.frontend),
            read_as(F::SCHEME).then_some(r.scheme),
            read_as(F::BACKEND).then_some(r.backend),
        ]))
    }

    /// Method and path, for the sample of disagreements.
    pub(super) fn at(&self) -> (&str, &str) {
        (self.0.str(0), self.0.str(1))
    }

    pub(super) fn view(&self) -> RequestInfo<'_> {
        let p = &self.0;
        RequestInfo {
            method: p.str(0),
            path: p.str(1),
            query: p.get(2),
            host: p.get(3),
            client_ip: p.str(4),
            frontend: p.str(5),
            scheme: p.str(6),
            backend: p.str(7),
        }
    }
}

/// A response's fields, owned, for the candidate's task: backend, server, method, path,
/// client address, scheme and frontend, in that order.
pub(super) struct OwnedResponse(Packed<7>);

impl OwnedResponse {
    pub(super) fn of(r: &ResponseInfo<'_>) -> Self {
        OwnedResponse(Packed::new([
            r.backend,
            r.server,
            Some(r.method),
            Some(r.path),
            Some(r.client_ip),
            Some(r.scheme),
            Some(r.frontend),
        ]))
    }

    /// Method and path, for the sample of disagreements.
    pub(super) fn at(&self) -> (&str, &str) {
        (self.0.str(2), self.0.str(3))
    }

    pub(super) fn view(&self) -> ResponseInfo<'_> {
        let p = &self.0;
        ResponseInfo {
            backend: p.get(0),
            server: p.get(1),
            method: p.str(2),
            path: p.str(3),
            client_ip: p.str(4),
            scheme: p.str(5),
            frontend: p.str(6),
        }
    }
}

/// A request decision, as the shadow compares it: `unchanged` is a `proceed` that changes
/// nothing; a note (the plugin's own memo for its `on-response`) is left out.
#[derive(Debug, PartialEq)]
pub(super) enum Outcome {
    Proceed {
        backend: Option<String>,
        server: Option<String>,
        path: Option<String>,
        /// What each edit does (set, append, remove), the header's name and its value.
        edits: Vec<(&'static str, String, Vec<u8>)>,
    },
    Respond {
        status: u16,
        headers: Vec<String>,
        body: bytes::Bytes,
    },
}

impl Outcome {
    pub(super) fn unchanged() -> Outcome {
        Outcome::Proceed {
            backend: None,
            server: None,
            path: None,
            edits: Vec::new(),
        }
    }

    pub(super) fn answer(a: &super::super::Answer) -> Outcome {
        Outcome::Respond {
            status: a.status.as_u16(),
            headers: a
                .headers
                .iter()
                .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v.as_bytes())))
                .collect(),
            body: a.body.clone(),
        }
    }

    /// An `on-response` decision: edits are a `proceed`'s, a replacement a local answer.
    pub(super) fn of_response(decision: &ResponseDecision) -> Outcome {
        match decision {
            ResponseDecision::Unchanged => Outcome::unchanged(),
            ResponseDecision::Edit(edits) => Outcome::Proceed {
                backend: None,
                server: None,
                path: None,
                edits: edits.iter().map(edit_parts).collect(),
            },
            ResponseDecision::Replace(a) => Outcome::answer(a),
        }
    }

    pub(super) fn of_request(decision: &RequestDecision) -> Outcome {
        match decision {
            RequestDecision::Unchanged => Outcome::unchanged(),
            RequestDecision::Proceed(p) => Outcome::Proceed {
                backend: p.backend.clone(),
                server: p.server.clone(),
                path: p.set_path.clone(),
                edits: p.edits.iter().map(edit_parts).collect(),
            },
            RequestDecision::Respond(a) => Outcome::answer(a),
        }
    }

    /// How `other` differs from this, the most telling difference first; None when alike.
    pub(super) fn differs(&self, other: &Outcome) -> Option<&'static str> {
        match (self, other) {
            (a, b) if a == b => None,
            (
                Outcome::Proceed {
                    backend, server, ..
                },
                Outcome::Proceed {
                    backend: b2,
                    server: s2,
                    ..
                },
            ) => Some(if backend != b2 || server != s2 {
                "backend"
            } else {
                "edits"
            }),
            _ => Some("status"),
        }
    }
}

impl Outcome {
    /// The decision in words: header names, and their values when `values`.
    pub(super) fn text(&self, values: bool) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        match self {
            Outcome::Respond {
                status, headers, ..
            } => {
                let _ = write!(out, "respond {status}");
                if values {
                    for h in headers {
                        let _ = write!(out, "; {h}");
                    }
                }
            }
            Outcome::Proceed {
                backend,
                server,
                path,
                edits,
            } => {
                out.push_str("proceed");
                if let Some(b) = backend {
                    let _ = write!(out, " backend {b}");
                }
                if let Some(s) = server {
                    let _ = write!(out, " server {s}");
                }
                if let Some(p) = path {
                    let _ = write!(out, " path {p}");
                }
                for (op, name, value) in edits {
                    let _ = write!(out, "; {op} {name}");
                    if values && *op != "remove" {
                        let _ = write!(out, ": {}", String::from_utf8_lossy(value));
                    }
                }
            }
        }
        out
    }
}

fn edit_parts(edit: &Edit) -> (&'static str, String, Vec<u8>) {
    match edit {
        Edit::Set(name, value) => ("set", name.to_string(), value.as_bytes().to_vec()),
        Edit::Append(name, value) => ("append", name.to_string(), value.as_bytes().to_vec()),
        Edit::Remove(name) => ("remove", name.to_string(), Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::Packed;

    #[test]
    fn packed_strings_read_back_as_they_went_in() {
        let p = Packed::new([Some("GET"), None, Some(""), Some("/a/b"), None]);
        assert_eq!(p.text.capacity(), 7, "one allocation of the exact size");
        assert_eq!(p.get(0), Some("GET"));
        assert_eq!(p.get(1), None);
        assert_eq!(p.str(1), "");
        assert_eq!(p.get(2), Some(""));
        assert_eq!(p.get(3), Some("/a/b"));
        assert_eq!(p.get(4), None);
    }
}
