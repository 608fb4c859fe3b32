//! Test helpers: mock servers, raw clients, and a builder that starts the real proxy.
