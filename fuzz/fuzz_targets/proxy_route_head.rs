//! The proxy's host/path matching and request-head handling on arbitrary bytes: route
//! lookup must never panic and only ever name a service of the table; header handling
//! (hop-by-hop stripping, client address through trusted proxies, X-Forwarded-*) must
//! never panic and always leave X-Request-Id / X-Real-IP set, no Transfer-Encoding.
//!
//! Input layout: line 1 = Host, line 2 = path, the next up to 4 lines = `host prefix`
//! route patterns; the whole input is also read as header lines.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let host = lines.next().unwrap_or("");
    let path = lines.next().unwrap_or("/");
    let patterns: Vec<(String, String)> = lines
        .take(4)
        .map(|l| {
            let (h, p) = l.split_once(' ').unwrap_or((l, "/"));
            (h.to_owned(), p.to_owned())
        })
        .collect();
    if let Some(i) = proxy::fuzzing::fuzz_route(&patterns, host, path) {
        assert!(i < patterns.len());
    }
    proxy::fuzzing::fuzz_request_head(data);
});
