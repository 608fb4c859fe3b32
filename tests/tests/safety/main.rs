//! Hostile and broken clients: malformed requests, request smuggling, HTTP/2 abuse. None of
//! it reaches a server.

mod h2_abuse;
mod malformed;
mod smuggling;
