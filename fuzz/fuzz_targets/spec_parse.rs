//! `spec::parse` on arbitrary UTF-8 text: it must return a spec or errors, never panic,
//! and every error must point inside the text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(errors) = spec::parse(Path::new("/fuzz/berth.toml"), text) {
        assert!(!errors.0.is_empty());
        let lines = text.split('\n').count();
        for e in &errors.0 {
            assert!(e.line >= 1 && e.line <= lines, "{e}");
            assert!(e.col >= 1, "{e}");
        }
    }
});
