fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__shim") {
        runtime::shim::main(args[2..].to_vec());
    }
}
