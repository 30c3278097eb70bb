//! End-to-end tests: the real `berth` binary in a temp dir, real child processes (the
//! `berth-test-app` binary), real sockets. One test binary, modules by area.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod config;
mod deploy;
mod edge;
mod harness;
mod load;
mod supervise;
