//! End-to-end tests: the real `berth` binary in a temp dir, real child processes (the
//! `berth-test-app` binary), real sockets. One test binary, modules by area.

mod api;
mod config;
mod harness;
mod supervise;
