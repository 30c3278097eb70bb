//! The `berth` binary: command-line parsing, exit codes, and the hidden shim mode.
//! Everything else lives in the modules: `up` runs the daemon, `api` serves the
//! control API, `cli` talks to it.
#![forbid(unsafe_code)]

mod api;
mod cli;
mod client;
mod dataplane;
mod up;

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args();
    let _program = args.next();
    if args.next().as_deref() == Some("__shim") {
        // The per-instance shim: single-threaded, no async runtime, never returns.
        runtime::shim::main(args.collect());
    }
    cli::main()
}
