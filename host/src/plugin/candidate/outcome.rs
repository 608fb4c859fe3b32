//! What a shadow call is given, owned for the shadow thread, and what the two versions
//! decided, in a form that compares.

use super::super::validate::Edit;
use super::super::{RequestDecision, RequestInfo, ResponseDecision, ResponseInfo};

/// A request's fields, owned, for the candidate's task.
pub(super) struct OwnedRequest {
    pub(super) method: String,
    pub(super) path: String,
    query: Option<String>,
    host: Option<String>,
    client_ip: String,
    frontend: String,
    scheme: String,
    backend: String,
}

impl OwnedRequest {
    /// The fields of `r` in `read` (the ones the candidate declared), and its method and
    /// path (for the sample); the others stay empty, as the candidate would see them.
    pub(super) fn of(r: &RequestInfo<'_>, read: super::super::types::RequestFields) -> Self {
        use super::super::types::RequestFields as F;
        let field = |flag: F, value: &str| {
            if read.contains(flag) {
                value.to_owned()
            } else {
                String::new()
            }
        };
        OwnedRequest {
            method: r.method.to_owned(),
            path: r.path.to_owned(),
            query: r
                .query
                .filter(|_| read.contains(F::QUERY))
                .map(str::to_owned),
            host: r.host.filter(|_| read.contains(F::HOST)).map(str::to_owned),
            client_ip: field(F::CLIENT_IP, r.client_ip),
            frontend: field(F::FRONTEND, r.frontend),
            scheme: field(F::SCHEME, r.scheme),
            backend: field(F::BACKEND, r.backend),
        }
    }

    pub(super) fn view(&self) -> RequestInfo<'_> {
        RequestInfo {
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            host: self.host.as_deref(),
            client_ip: &self.client_ip,
            frontend: &self.frontend,
            scheme: &self.scheme,
            backend: &self.backend,
        }
    }
}

/// A response's fields, owned, for the candidate's task.
pub(super) struct OwnedResponse {
    backend: Option<String>,
    server: Option<String>,
    pub(super) method: String,
    pub(super) path: String,
    client_ip: String,
    scheme: String,
    frontend: String,
}

impl OwnedResponse {
    pub(super) fn of(r: &ResponseInfo<'_>) -> Self {
        OwnedResponse {
            backend: r.backend.map(str::to_owned),
            server: r.server.map(str::to_owned),
            method: r.method.to_owned(),
            path: r.path.to_owned(),
            client_ip: r.client_ip.to_owned(),
            scheme: r.scheme.to_owned(),
            frontend: r.frontend.to_owned(),
        }
    }

    pub(super) fn view(&self) -> ResponseInfo<'_> {
        ResponseInfo {
            backend: self.backend.as_deref(),
            server: self.server.as_deref(),
            method: &self.method,
            path: &self.path,
            client_ip: &self.client_ip,
            scheme: &self.scheme,
            frontend: &self.frontend,
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
