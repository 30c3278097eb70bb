//! berth's brain.
#![forbid(unsafe_code)]
