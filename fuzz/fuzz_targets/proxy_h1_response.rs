//! The inline HTTP/1.1 client's reading of an instance's response (head parsing,
//! Content-Length / chunked / read-to-close framing) on arbitrary bytes: it must never
//! panic, must read the same whether the bytes arrive at once or in pieces, and must
//! never yield more body than a Content-Length declares.
//!
//! Input layout: byte 0 = request method (odd: HEAD) and piece size (byte 0 >> 1); the
//! rest is the response.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    proxy::fuzzing::fuzz_response(data);
});
