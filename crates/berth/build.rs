//! Links the berth executable as non-PIE.
//!
//! berth runs one shim per instance, each a copy of this executable. In a PIE, the
//! dynamic loader relocates the read-only data (vtables, string tables) of every process
//! at start, making those pages private: about 300 KiB per shim. Linked at a fixed
//! address, those pages stay shared with every other berth process. The cost is that the
//! executable's own code is not address-randomized (libraries, heap and stack still are).
fn main() {
    println!("cargo:rustc-link-arg-bin=berth=-no-pie");
}
