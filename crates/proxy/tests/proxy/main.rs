//! Integration tests of the proxy with real sockets: in-process echo upstreams, real
//! clients (HTTP/1.1, HTTP/2 over TLS, raw TCP, WebSocket). One binary, one link.

mod errors;
mod forwarding;
mod limits;
mod reload;
mod routing;
mod serving;
mod support;
mod tls;
mod websocket;
