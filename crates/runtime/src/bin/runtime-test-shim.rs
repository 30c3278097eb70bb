//! A stand-in for the berth binary in this crate's tests: it only has the `__shim` mode
//! (integration tests point `LaunchSpec::shim_exe` at it via `CARGO_BIN_EXE_…`).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__shim") {
        runtime::shim::main(args[2..].to_vec());
    }
    eprintln!("usage: runtime-test-shim __shim INSTANCE < launch-spec.json");
    std::process::exit(2);
}
