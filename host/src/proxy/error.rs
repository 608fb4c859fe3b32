//! Everything that can go wrong with a request, as the client sees it: one status each.

use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("the client's request body was malformed or cut short")]
    ClientBody,
    #[error("method not implemented: {0}")]
    NotImplemented(&'static str),
    #[error("no server is available to handle this request")]
    NoServer,
    #[error("every server is at its maxconn and the queue is full")]
    QueueFull,
    #[error("no server slot freed up within timeout.queue")]
    QueueTimeout,
    #[error("could not connect to any server: {0}")]
    ConnectFailed(String),
    #[error("the server did not answer within timeout.server")]
    ServerTimeout,
    #[error("the server failed to send a valid response: {0}")]
    ServerFailed(String),
    #[error("a plugin failed (fail-closed)")]
    PluginFailed,
}

impl ProxyError {
    /// The one place that decides which status a client gets for each error.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::ClientBody => StatusCode::BAD_REQUEST,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::NoServer
            | ProxyError::QueueFull
            | ProxyError::QueueTimeout
            | ProxyError::PluginFailed
            | ProxyError::ConnectFailed(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ServerTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ServerFailed(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// HAProxy-style termination state for the access log: who ended the exchange, and in
    /// which phase (R request, C connect, H response head, D data).
    pub fn termination(&self) -> [u8; 2] {
        match self {
            ProxyError::BadRequest(_) | ProxyError::NotImplemented(_) => *b"PR",
            ProxyError::ClientBody => *b"CD",
            ProxyError::NoServer | ProxyError::ConnectFailed(_) => *b"SC",
            ProxyError::QueueFull => *b"PQ",
            ProxyError::QueueTimeout => *b"sQ",
            ProxyError::PluginFailed => *b"PI",
            ProxyError::ServerTimeout => *b"sH",
            ProxyError::ServerFailed(_) => *b"SH",
        }
    }

    /// Errors after which the client connection cannot be trusted to stay in sync.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_) | ProxyError::ClientBody | ProxyError::NotImplemented(_)
        )
    }

    /// The default body: short and plain, with no internal detail.
    pub fn default_body(&self) -> String {
        let status = self.status();
        let detail = match self {
            ProxyError::BadRequest(why) => why,
            ProxyError::ClientBody => "The request body was malformed.",
            ProxyError::NotImplemented(_) => "This method is not supported.",
            ProxyError::NoServer
            | ProxyError::QueueFull
            | ProxyError::QueueTimeout
            | ProxyError::ConnectFailed(_) => "No server is available to handle this request.",
            ProxyError::PluginFailed => "The service is temporarily unavailable.",
            ProxyError::ServerTimeout => "The server didn't respond in time.",
            ProxyError::ServerFailed(_) => "The server returned an invalid or incomplete response.",
        };
        format!(
            "{} {}\n{detail}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
    }
}
