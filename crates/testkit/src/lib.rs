//! Test-only helpers.
#![forbid(unsafe_code)]
