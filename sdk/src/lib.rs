//! Write weir plugins in Rust.
//!
//! A plugin is a type implementing [`Plugin`], exported with [`export_plugin!`]:
//!
//! ```ignore
//! use weir_sdk::{export_plugin, Plugin, Request, RequestAction, Proceed, Hooks};
//!
//! #[derive(serde::Deserialize)]
//! struct Config { header: String }
//!
//! struct Tag(Config);
//!
//! impl Plugin for Tag {
//!     type Config = Config;
//!     const NAME: &'static str = "tag";
//!     const VERSION: &'static str = "0.1.0";
//!     const HOOKS: Hooks = Hooks::ON_REQUEST;
//!     fn configure(config: Config) -> Result<Self, String> { Ok(Tag(config)) }
//!     fn on_request(&self, _req: Request) -> RequestAction {
//!         RequestAction::Proceed(Proceed::unchanged().set_header(&self.0.header, "1"))
//!     }
//! }
//!
//! export_plugin!(Tag);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` and point weir at the
//! `.wasm` file. The same crate builds natively too, so its logic is unit-tested with
//! [`testing::FakeHost`] standing in for weir.

#[cfg(any(test, all(target_arch = "wasm32", feature = "size-classes")))]
mod alloc;
pub mod host;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
pub mod util;

#[doc(hidden)]
#[allow(unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin-l4",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "weir_sdk::bindings",
    });
}

pub use bindings::weir::plugin::backends::{ServerInfo, ServerState};
pub use bindings::weir::plugin::counters::Sliding;
pub use bindings::weir::plugin::l4::{ConnectAction, ConnectRoute, Connection};
pub use bindings::weir::plugin::log::Level;
pub use bindings::weir::plugin::types::{
    Header, HeaderOp, Hooks, Info, LocalResponse, Probe, Proceed, RequestAction, RequestFields,
    ResponseAction, ResponseFields, Verdict,
};
#[doc(hidden)]
pub use serde_json;

/// A client request, as `on_request` sees it. A field the plugin did not declare in
/// [`Plugin::request_fields`] is empty (`""`, or `None` for `query` and `host`).
#[derive(Debug, Clone)]
pub struct Request {
    /// "GET", "POST", ...
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// The query string, without the "?".
    pub query: Option<String>,
    /// The host the client addressed: the target's authority, else the Host header.
    pub host: Option<String>,
    /// The headers the plugin declared in [`Plugin::request_headers`] (all by default).
    pub headers: Vec<Header>,
    /// The client's IP address, as text.
    pub client_ip: String,
    /// The frontend the request came in on.
    pub frontend: String,
    /// "http" or "https".
    pub scheme: String,
    /// The backend the request is going to as things stand: the frontend's default, or
    /// the one an earlier plugin of the chain chose.
    pub backend: String,
    /// A number that identifies this request within the weir process.
    pub id: u64,
}

impl From<bindings::weir::plugin::types::Request> for Request {
    /// What weir sent: the fields the plugin declared (the others empty strings, which
    /// allocate nothing), their strings taken over as they came.
    fn from(wire: bindings::weir::plugin::types::Request) -> Self {
        use bindings::weir::plugin::types::RequestValue as V;
        let mut request = Request {
            method: String::new(),
            path: String::new(),
            query: None,
            host: None,
            headers: wire.headers.unwrap_or_default(),
            client_ip: String::new(),
            frontend: String::new(),
            scheme: String::new(),
            backend: String::new(),
            id: wire.id,
        };
        // Matched as a plain list (a flattening iterator over the option made a loop of
        // some 550 instructions even when there was nothing in it).
        let Some(values) = wire.fields else {
            return request;
        };
        for value in values {
            match value {
                V::Method(v) => request.method = v,
                V::Path(v) => request.path = v,
                V::Query(v) => request.query = Some(v),
                V::Host(v) => request.host = Some(v),
                V::ClientIp(v) => request.client_ip = v,
                V::Frontend(v) => request.frontend = v,
                V::Scheme(v) => request.scheme = v,
                V::Backend(v) => request.backend = v,
            }
        }
        request
    }
}

/// A response on its way to the client, as `on_response` sees it. A field the plugin did
/// not declare in [`Plugin::response_fields`] is empty (`""`, or `None` for `backend` and
/// `server`).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The headers the plugin declared in [`Plugin::response_headers`] (all by default).
    pub headers: Vec<Header>,
    /// The backend and server that answered; `None` for a local response.
    pub backend: Option<String>,
    pub server: Option<String>,
    /// The request this answers.
    pub method: String,
    pub path: String,
    pub client_ip: String,
    /// "http" or "https".
    pub scheme: String,
    /// The frontend the request came in on.
    pub frontend: String,
    /// The request's `id`.
    pub id: u64,
    /// What this plugin's `on_request` left for it with [`Proceed::note`], if anything.
    pub note: Option<String>,
}

impl From<bindings::weir::plugin::types::Response> for Response {
    /// What weir sent, as for [`Request`].
    fn from(wire: bindings::weir::plugin::types::Response) -> Self {
        use bindings::weir::plugin::types::ResponseValue as V;
        let mut response = Response {
            status: wire.status,
            headers: wire.headers.unwrap_or_default(),
            backend: None,
            server: None,
            method: String::new(),
            path: String::new(),
            client_ip: String::new(),
            scheme: String::new(),
            frontend: String::new(),
            id: wire.id,
            note: wire.note,
        };
        let Some(values) = wire.fields else {
            return response;
        };
        for value in values {
            match value {
                V::Backend(v) => response.backend = Some(v),
                V::Server(v) => response.server = Some(v),
                V::Method(v) => response.method = v,
                V::Path(v) => response.path = v,
                V::ClientIp(v) => response.client_ip = v,
                V::Scheme(v) => response.scheme = v,
                V::Frontend(v) => response.frontend = v,
            }
        }
        response
    }
}

/// A weir plugin. Every hook has a safe default; declare the hooks you implement in
/// `HOOKS`, since weir calls no others.
pub trait Plugin: Sized + 'static {
    /// The plugin's `config` table, deserialized from JSON.
    type Config: serde::de::DeserializeOwned;
    const NAME: &'static str;
    const VERSION: &'static str;
    const HOOKS: Hooks;

    /// Builds the plugin from its config. An error should name the field at fault.
    fn configure(config: Self::Config) -> Result<Self, String>;

    /// The request headers `on_request` reads, lower-case; `None` (the default) for all.
    /// weir copies only these into `request.headers`, which makes every call cheaper.
    fn request_headers(&self) -> Option<Vec<String>> {
        None
    }

    /// The request fields `on_request` reads; `None` (the default) for all. The others
    /// arrive empty (`""`, or `None` for `query` and `host`) and cost nothing to send: a
    /// plugin that reads only the path says `Some(RequestFields::PATH)`.
    fn request_fields(&self) -> Option<RequestFields> {
        None
    }

    /// The response headers `on_response` reads, lower-case; `None` (the default) for
    /// all. A plugin that only sets or removes response headers reads none: `Some(vec![])`.
    fn response_headers(&self) -> Option<Vec<String>> {
        None
    }

    /// The response fields `on_response` reads; `None` (the default) for all. The others
    /// arrive empty and cost nothing to send: a plugin that reads only the scheme says
    /// `Some(ResponseFields::SCHEME)`.
    fn response_fields(&self) -> Option<ResponseFields> {
        None
    }

    /// Header edits `on_request` would make to every request of `frontend`, whatever it
    /// is: when a plugin's request edits depend on nothing in the request (the
    /// frontend's name, which `Request::frontend` would give, may be in them), it says
    /// so here and weir applies them itself, without calling `on_request` (which then
    /// never runs for that frontend). Asked once per frontend whose chain has the
    /// plugin. `None` (the default): every request goes to `on_request`.
    fn request_edits(&self, _frontend: &str) -> Option<Vec<HeaderOp>> {
        None
    }

    /// The same for `on_response`: edits made to every response of `frontend` whatever
    /// it is, applied by weir without a call. `None` (the default): every response goes
    /// to `on_response`.
    fn response_edits(&self, _frontend: &str) -> Option<Vec<HeaderOp>> {
        None
    }

    /// Decides what happens to a request. Default: it goes on unchanged.
    fn on_request(&self, _request: Request) -> RequestAction {
        RequestAction::Unchanged
    }

    /// Edits or replaces a response. Default: unchanged.
    fn on_response(&self, _response: Response) -> ResponseAction {
        ResponseAction::Unchanged
    }

    /// Judges a health check response. Default: up.
    fn on_health_check(&self, _probe: Probe) -> Verdict {
        Verdict::Up(None)
    }

    /// Decides on a connection to a tcp frontend whose chain has the plugin: another
    /// backend (and a server to prefer), or a close. Default: it goes on unchanged.
    /// (No flag in `HOOKS`: weir calls it for the plugins of tcp frontends' chains.)
    fn on_connect(&self, _connection: Connection) -> ConnectAction {
        ConnectAction::Unchanged
    }
}

/// Parses the JSON config weir hands over into the plugin's `Config`, naming the field at
/// fault on error.
pub fn parse_config<P: Plugin>(json: &str) -> Result<P, String> {
    let de = &mut serde_json::Deserializer::from_str(json);
    let config: P::Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        // The position is in the JSON weir made from the TOML: no help to the user.
        let inner = e.into_inner().to_string();
        let inner = match inner.rfind(" at line ") {
            Some(at) => inner[..at].to_owned(),
            None => inner,
        };
        if path.is_empty() || path == "." {
            inner
        } else {
            format!("{path}: {inner}")
        }
    })?;
    P::configure(config)
}

/// What goes back to weir: an empty `proceed` as `unchanged`, which costs less to return
/// (no list and no strings to copy out of the sandbox, nothing to free afterwards).
#[doc(hidden)]
pub fn request_action_to_wire(action: RequestAction) -> RequestAction {
    match action {
        RequestAction::Proceed(p) if p.is_unchanged() => RequestAction::Unchanged,
        action => action,
    }
}

/// As [`request_action_to_wire`], for `on-response`.
#[doc(hidden)]
pub fn response_action_to_wire(action: ResponseAction) -> ResponseAction {
    match action {
        ResponseAction::Proceed(edits) if edits.is_empty() => ResponseAction::Unchanged,
        action => action,
    }
}

impl Proceed {
    /// Go on as the request is. (Returned as is, the SDK sends it as
    /// [`RequestAction::Unchanged`].)
    pub fn unchanged() -> Self {
        Proceed {
            edits: Vec::new(),
            set_path: None,
            backend: None,
            server: None,
            note: None,
        }
    }

    /// Whether it changes nothing and leaves no note.
    pub fn is_unchanged(&self) -> bool {
        self.edits.is_empty()
            && self.set_path.is_none()
            && self.backend.is_none()
            && self.server.is_none()
            && self.note.is_none()
    }

    /// Leaves a note for this plugin's `on-response` to this request.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    pub fn set_header(mut self, name: &str, value: &str) -> Self {
        self.edits.push(HeaderOp::Set(Header {
            name: name.to_ascii_lowercase(),
            value: value.to_owned(),
        }));
        self
    }

    pub fn append_header(mut self, name: &str, value: &str) -> Self {
        self.edits.push(HeaderOp::Append(Header {
            name: name.to_ascii_lowercase(),
            value: value.to_owned(),
        }));
        self
    }

    pub fn remove_header(mut self, name: &str) -> Self {
        self.edits.push(HeaderOp::Remove(name.to_ascii_lowercase()));
        self
    }

    pub fn backend(mut self, backend: &str) -> Self {
        self.backend = Some(backend.to_owned());
        self
    }

    pub fn server(mut self, server: &str) -> Self {
        self.server = Some(server.to_owned());
        self
    }

    pub fn path(mut self, path: &str) -> Self {
        self.set_path = Some(path.to_owned());
        self
    }
}

impl LocalResponse {
    /// A plain-text response.
    pub fn text(status: u16, body: &str) -> Self {
        LocalResponse {
            status,
            headers: vec![Header {
                name: "content-type".into(),
                value: "text/plain; charset=utf-8".into(),
            }],
            body: body.as_bytes().to_vec(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push(Header {
            name: name.to_ascii_lowercase(),
            value: value.to_owned(),
        });
        self
    }
}

impl Request {
    /// The first value of a header (names are matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }
}

/// Exports a [`Plugin`] as the component's `weir:plugin` world (`plugin-l4`: with
/// `on-connect`, so it may also be in a tcp frontend's chain). On targets other than
/// wasm32 it expands to nothing, so plugin crates also build (and test) natively.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            use $crate::bindings::weir::plugin::types as __types;
            struct __WeirExport;
            ::std::thread_local! {
                static __PLUGIN: ::std::cell::RefCell<Option<$plugin>> = const { ::std::cell::RefCell::new(None) };
            }
            fn __with<R>(f: impl FnOnce(&$plugin) -> R) -> R {
                __PLUGIN.with(|p| f(p.borrow().as_ref().expect("a hook called before a successful configure")))
            }
            impl $crate::bindings::Guest for __WeirExport {
                fn describe() -> __types::Info {
                    __types::Info {
                        name: <$plugin as $crate::Plugin>::NAME.into(),
                        version: <$plugin as $crate::Plugin>::VERSION.into(),
                        hooks: <$plugin as $crate::Plugin>::HOOKS,
                    }
                }
                fn configure(config: String) -> Result<(), String> {
                    let plugin = $crate::parse_config::<$plugin>(&config)?;
                    __PLUGIN.with(|p| *p.borrow_mut() = Some(plugin));
                    Ok(())
                }
                fn request_headers() -> Option<Vec<String>> {
                    __with(|p| $crate::Plugin::request_headers(p))
                }
                fn request_fields() -> Option<__types::RequestFields> {
                    __with(|p| $crate::Plugin::request_fields(p))
                }
                fn response_headers() -> Option<Vec<String>> {
                    __with(|p| $crate::Plugin::response_headers(p))
                }
                fn response_fields() -> Option<__types::ResponseFields> {
                    __with(|p| $crate::Plugin::response_fields(p))
                }
                fn request_edits(frontend: String) -> Option<Vec<__types::HeaderOp>> {
                    __with(|p| $crate::Plugin::request_edits(p, &frontend))
                }
                fn response_edits(frontend: String) -> Option<Vec<__types::HeaderOp>> {
                    __with(|p| $crate::Plugin::response_edits(p, &frontend))
                }
                fn on_request(request: __types::Request) -> __types::RequestAction {
                    $crate::request_action_to_wire(__with(|p| $crate::Plugin::on_request(p, request.into())))
                }
                fn on_response(response: __types::Response) -> __types::ResponseAction {
                    $crate::response_action_to_wire(__with(|p| $crate::Plugin::on_response(p, response.into())))
                }
                fn on_health_check(probe: __types::Probe) -> __types::Verdict {
                    __with(|p| $crate::Plugin::on_health_check(p, probe))
                }
                fn on_connect(connection: $crate::Connection) -> $crate::ConnectAction {
                    __with(|p| $crate::Plugin::on_connect(p, connection))
                }
            }
            $crate::bindings::__export_plugin_world!(__WeirExport with_types_in $crate::bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_proceed_goes_back_as_unchanged_and_any_change_as_itself() {
        let wire = |p: Proceed| request_action_to_wire(RequestAction::Proceed(p));
        assert!(matches!(
            wire(Proceed::unchanged()),
            RequestAction::Unchanged
        ));
        for changed in [
            Proceed::unchanged().set_header("x-a", "1"),
            Proceed::unchanged().note("seen"),
            Proceed {
                set_path: Some("/b".into()),
                ..Proceed::unchanged()
            },
            Proceed {
                backend: Some("b".into()),
                ..Proceed::unchanged()
            },
            Proceed {
                server: Some("s".into()),
                ..Proceed::unchanged()
            },
        ] {
            assert!(matches!(wire(changed), RequestAction::Proceed(_)));
        }
        let respond = RequestAction::Respond(LocalResponse {
            status: 204,
            headers: Vec::new(),
            body: Vec::new(),
        });
        assert!(matches!(
            request_action_to_wire(respond),
            RequestAction::Respond(_)
        ));

        assert!(matches!(
            response_action_to_wire(ResponseAction::Proceed(Vec::new())),
            ResponseAction::Unchanged
        ));
        let edit = HeaderOp::Remove("server".into());
        assert!(matches!(
            response_action_to_wire(ResponseAction::Proceed(vec![edit])),
            ResponseAction::Proceed(ops) if ops.len() == 1
        ));
    }
}
