//! The shim: the hidden `berth __shim` mode. Single-threaded, no async runtime.

/// Entry point of `berth __shim ARGS…` (`args` excludes the program name and `__shim`).
/// Never returns.
pub fn main(_args: Vec<String>) -> ! {
    std::process::exit(1)
}
