//! TOML text → validated [`Spec`], reporting every error with `FILE:LINE:COL`.
//! TODO(spec helper): implement.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::Spec;

/// One problem in the config file, at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// All the problems found, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Parses and validates `text`, the contents of the file at `path` (which should be
/// absolute: relative paths in the file resolve from its directory).
pub fn parse(path: &Path, _text: &str) -> Result<Spec, SpecErrors> {
    Err(SpecErrors(vec![SpecError {
        file: path.to_owned(),
        line: 1,
        col: 1,
        message: "not implemented".into(),
    }]))
}

/// Reads and parses the file at `path` (made absolute against the current directory).
pub fn load(path: &Path) -> Result<Spec, SpecErrors> {
    let abs = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    match std::fs::read_to_string(&abs) {
        Ok(text) => parse(&abs, &text),
        Err(e) => Err(SpecErrors(vec![SpecError {
            file: abs,
            line: 1,
            col: 1,
            message: format!("cannot read the config file: {e}"),
        }])),
    }
}
