//! What crosses the sandbox's edge, as the WIT types the bindings generate: the fields
//! and headers a hook gets (only those its plugin declared it reads, borrowed, copied
//! once into the sandbox), and the declarations a plugin answers at load.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::{LoadError, types, validate};

/// A hook a plugin may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Request,
    Response,
    HealthCheck,
}

/// A response a plugin made, checked: what weir sends.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What `on-request` decided, checked.
#[derive(Debug)]
pub enum RequestDecision {
    Unchanged,
    Proceed(Proceed),
    /// Answer the request with this response.
    Respond(Answer),
}

/// Go on, with these changes (each checked; the backend and server names are looked up
/// by the caller, which knows the backends).
#[derive(Debug, Default)]
pub struct Proceed {
    pub edits: Vec<validate::Edit>,
    /// A new path, with or without a query.
    pub set_path: Option<String>,
    pub backend: Option<String>,
    pub server: Option<String>,
    /// For the plugin's own `on-response`.
    pub note: Option<String>,
}

/// What `on-response` decided, checked.
#[derive(Debug)]
pub enum ResponseDecision {
    Unchanged,
    Edit(Vec<validate::Edit>),
    /// Replace the whole response with this one.
    Replace(Answer),
}

/// What a health check got back, for a plugin's verdict.
#[derive(Debug, Clone, Copy)]
pub struct HealthProbe<'a> {
    pub backend: &'a str,
    pub server: &'a str,
    pub status: u16,
    pub headers: &'a HeaderMap,
    /// The start of the body (up to 16 KiB).
    pub body_prefix: &'a [u8],
}

/// A plugin's verdict on a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthVerdict {
    /// Up, at this weight (or the configured one).
    Up(Option<u32>),
    Down(String),
}

/// A plugin's own response, checked.
pub(super) fn answer(r: types::LocalResponse) -> Result<Answer, String> {
    validate::local_response(&r)?;
    let mut headers = HeaderMap::new();
    for h in &r.headers {
        let (n, v) = validate::header(h)?;
        headers.append(n, v);
    }
    Ok(Answer {
        status: validate::status(r.status)?,
        headers,
        body: Bytes::from(r.body),
    })
}

/// `on-request`'s action, checked whole.
pub(super) fn request_decision(action: types::RequestAction) -> Result<RequestDecision, String> {
    Ok(match action {
        types::RequestAction::Unchanged => RequestDecision::Unchanged,
        types::RequestAction::Respond(r) => RequestDecision::Respond(answer(r)?),
        types::RequestAction::Proceed(p) => {
            if let Some(note) = &p.note {
                validate::note(note)?;
            }
            if let Some(path) = &p.set_path {
                validate::path(path)?;
            }
            RequestDecision::Proceed(Proceed {
                edits: validate::edits(&p.edits)?,
                set_path: p.set_path,
                backend: p.backend,
                server: p.server,
                note: p.note,
            })
        }
    })
}

/// `on-response`'s action, checked whole.
pub(super) fn response_decision(action: types::ResponseAction) -> Result<ResponseDecision, String> {
    Ok(match action {
        types::ResponseAction::Unchanged => ResponseDecision::Unchanged,
        types::ResponseAction::Proceed(ops) => ResponseDecision::Edit(validate::edits(&ops)?),
        types::ResponseAction::Replace(r) => ResponseDecision::Replace(answer(r)?),
    })
}

/// A plugin's answer to one of its declaration exports, or the load error naming it.
pub(super) fn declared<T>(export: &str, answer: wasmtime::Result<T>) -> Result<T, LoadError> {
    answer.map_err(|e| LoadError::Component(format!("{export}: {e:#}")))
}

/// The header names a plugin declared it reads, each checked; None (all) stays None.
pub(super) fn declared_headers(
    export: &str,
    answer: wasmtime::Result<Option<Vec<String>>>,
) -> Result<Option<Vec<http::HeaderName>>, LoadError> {
    declared(export, answer)?
        .map(|names| names.iter().map(|n| validate::header_name(n)).collect())
        .transpose()
        .map_err(|e| LoadError::Component(format!("{export}: {e}")))
}

/// The edits a plugin declared it makes to every message, checked as a hook's edits are.
pub(super) fn declared_edits(
    export: &str,
    answer: wasmtime::Result<Option<Vec<types::HeaderOp>>>,
) -> Result<Option<Vec<validate::Edit>>, LoadError> {
    declared(export, answer)?
        .map(|ops| validate::edits(&ops))
        .transpose()
        .map_err(|e| LoadError::Component(format!("{export}: {e}")))
}

/// The headers of `names` (all of them for None) as plugins see them.
pub(super) fn selected_headers<'a>(
    names: Option<&'a [http::HeaderName]>,
    map: &'a http::HeaderMap,
) -> Vec<types::HeaderParam<'a>> {
    match names {
        None => headers_of(map),
        Some(names) => names
            .iter()
            .flat_map(|n| map.get_all(n).iter().map(move |v| (n, v)))
            .filter_map(header_of)
            .collect(),
    }
}

/// What the proxy knows of a request: every field `on-request` may get.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub host: Option<&'a str>,
    pub client_ip: &'a str,
    pub frontend: &'a str,
    pub scheme: &'a str,
    pub backend: &'a str,
}

impl<'a> RequestInfo<'a> {
    /// The fields in `read` that the request has, in the order of `request-fields`.
    pub fn values(&self, read: types::RequestFields) -> Fields<types::RequestValue<'a>, 8> {
        use types::{RequestFields as F, RequestValue as V};
        Fields::select(
            || V::Method(""),
            [
                (read.contains(F::METHOD), Some(V::Method(self.method))),
                (read.contains(F::PATH), Some(V::Path(self.path))),
                (read.contains(F::QUERY), self.query.map(V::Query)),
                (read.contains(F::HOST), self.host.map(V::Host)),
                (
                    read.contains(F::CLIENT_IP),
                    Some(V::ClientIp(self.client_ip)),
                ),
                (read.contains(F::FRONTEND), Some(V::Frontend(self.frontend))),
                (read.contains(F::SCHEME), Some(V::Scheme(self.scheme))),
                (read.contains(F::BACKEND), Some(V::Backend(self.backend))),
            ],
        )
    }
}

/// What the proxy knows of a response: every field `on-response` may get.
#[derive(Debug, Clone, Copy)]
pub struct ResponseInfo<'a> {
    /// The backend and server that answered; none for a local response.
    pub backend: Option<&'a str>,
    pub server: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub client_ip: &'a str,
    pub scheme: &'a str,
    pub frontend: &'a str,
}

impl<'a> ResponseInfo<'a> {
    /// The fields in `read` that the response has, in the order of `response-fields`.
    pub fn values(&self, read: types::ResponseFields) -> Fields<types::ResponseValue<'a>, 7> {
        use types::{ResponseFields as F, ResponseValue as V};
        Fields::select(
            || V::Method(""),
            [
                (read.contains(F::BACKEND), self.backend.map(V::Backend)),
                (read.contains(F::SERVER), self.server.map(V::Server)),
                (read.contains(F::METHOD), Some(V::Method(self.method))),
                (read.contains(F::PATH), Some(V::Path(self.path))),
                (
                    read.contains(F::CLIENT_IP),
                    Some(V::ClientIp(self.client_ip)),
                ),
                (read.contains(F::SCHEME), Some(V::Scheme(self.scheme))),
                (read.contains(F::FRONTEND), Some(V::Frontend(self.frontend))),
            ],
        )
    }
}

/// The fields a hook gets, at most `N` (one of each kind), kept on the stack.
pub struct Fields<T, const N: usize> {
    items: [T; N],
    len: usize,
}

impl<T, const N: usize> Fields<T, N> {
    /// The values that are present and wanted, in order (`filler` fills the unused slots).
    fn select(filler: impl Fn() -> T, values: [(bool, Option<T>); N]) -> Self {
        let mut fields = Fields {
            items: std::array::from_fn(|_| filler()),
            len: 0,
        };
        for (wanted, value) in values {
            if let Some(value) = value.filter(|_| wanted) {
                fields.items[fields.len] = value;
                fields.len += 1;
            }
        }
        fields
    }

    /// As a hook's `fields`: none when there are none, since even an empty list costs a
    /// call into the plugin's allocator.
    pub fn list(&self) -> Option<&[T]> {
        (self.len > 0).then(|| &self.items[..self.len])
    }
}

/// A header list as it goes into a hook: none when empty, since even an empty list costs
/// a call into the plugin's allocator.
pub fn header_list<'a, 'h>(
    headers: &'a [types::HeaderParam<'h>],
) -> Option<&'a [types::HeaderParam<'h>]> {
    (!headers.is_empty()).then_some(headers)
}

/// A header map as plugins see it (values that are not text are left out).
/// The headers borrow from the map: they are copied once, into the sandbox.
pub fn headers_of(map: &http::HeaderMap) -> Vec<types::HeaderParam<'_>> {
    map.iter().filter_map(header_of).collect()
}

pub(super) fn header_of<'a>(
    (n, v): (&'a http::HeaderName, &'a http::HeaderValue),
) -> Option<types::HeaderParam<'a>> {
    v.to_str().ok().map(|v| types::HeaderParam {
        name: n.as_str(),
        value: v,
    })
}

/// `weir:plugin/l4`'s types, written out here (the bindings are generated for the world
/// `plugin`, which every plugin has; `on-connect` is looked up apart, when a component
/// has it). Field names and order are the WIT's.
pub mod l4 {
    use wasmtime::component::{ComponentType, Lift, Lower};

    #[derive(ComponentType, Lower, Debug, Clone)]
    #[component(record)]
    pub struct Connection {
        #[component(name = "client-ip")]
        pub client_ip: String,
        #[component(name = "local-addr")]
        pub local_addr: String,
        pub frontend: String,
        pub sni: Option<String>,
        pub alpn: Vec<String>,
        #[component(name = "client-connections")]
        pub client_connections: u32,
        pub id: u64,
    }

    #[derive(ComponentType, Lift, Debug, Clone)]
    #[component(record)]
    pub struct ConnectRoute {
        pub backend: Option<String>,
        pub server: Option<String>,
    }

    #[derive(ComponentType, Lift, Debug, Clone)]
    #[component(variant)]
    pub enum ConnectAction {
        #[component(name = "proceed")]
        Proceed(ConnectRoute),
        #[component(name = "close")]
        Close(String),
        #[component(name = "unchanged")]
        Unchanged,
    }
}

/// What `on-connect` decided, checked (backend and server names are looked up by the
/// caller).
#[derive(Debug)]
pub enum ConnectDecision {
    Unchanged,
    Proceed {
        backend: Option<String>,
        server: Option<String>,
    },
    /// Close the connection, for this reason.
    Close(String),
}

/// A connection as `on-connect` is told of it.
#[derive(Debug, Clone)]
pub struct ConnectInfo {
    pub client_ip: String,
    pub local_addr: String,
    pub frontend: String,
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    pub client_connections: u32,
    pub id: u64,
}

/// `on-connect`'s action, checked: names are non-empty and at most 255 bytes.
pub(super) fn connect_decision(action: l4::ConnectAction) -> Result<ConnectDecision, String> {
    let name = |what: &str, n: Option<String>| -> Result<Option<String>, String> {
        match n {
            Some(n) if n.is_empty() || n.len() > 255 => Err(format!(
                "{what} name must be 1 to 255 bytes, got {} bytes",
                n.len()
            )),
            n => Ok(n),
        }
    };
    Ok(match action {
        l4::ConnectAction::Unchanged => ConnectDecision::Unchanged,
        l4::ConnectAction::Proceed(route) => ConnectDecision::Proceed {
            backend: name("backend", route.backend)?,
            server: name("server", route.server)?,
        },
        l4::ConnectAction::Close(mut reason) => {
            reason.truncate(reason.floor_char_boundary(1024));
            ConnectDecision::Close(reason)
        }
    })
}
