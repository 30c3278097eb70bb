//! The inline HTTP/1.1 server's reading of a client's request head on arbitrary bytes:
//! it must never panic; a head left to hyper (or incomplete) leaves the read buffer
//! exactly as it was; a head it takes is removed whole, reads the same with httparse,
//! and never declares a body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    proxy::fuzzing::fuzz_request(data);
});
