//! Typed reading of a spanned TOML document.
//!
//! Every accessor either returns the value or records an error at the value's position,
//! named by its dotted key path, and returns `None`, so one pass over the document
//! reports every problem. This module knows TOML types, not berth's keys: which keys a
//! table allows and what they mean is decided by the callers in `parse`.

use std::fmt;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::units::{parse_duration, parse_size};

/// Byte offsets into the config text.
pub(super) type Span = Range<usize>;

/// Problems found so far, each at a byte offset; turned into `LINE:COL` at the end.
#[derive(Debug, Default)]
pub(super) struct Errors(pub Vec<(usize, String)>);

impl Errors {
    pub fn at(&mut self, span: &Span, message: impl Into<String>) {
        self.0.push((span.start, message.into()));
    }
}

/// One value in the document with where it is and how to name it in a message.
#[derive(Debug, Clone)]
pub(super) struct Item<'a, 'i> {
    /// Dotted key path, e.g. `services.web.instances` or `services.web.domains[1]`.
    pub path: String,
    pub value: &'a DeValue<'i>,
    pub span: Span,
}

/// A TOML table (from a `[header]`, an inline table or dotted keys) being read.
#[derive(Debug, Clone)]
pub(super) struct Table<'a, 'i> {
    /// Dotted key path; empty for the document itself.
    pub path: String,
    pub table: &'a DeTable<'i>,
    /// The `[header]`, the inline table, or the first dotted key that made it.
    pub span: Span,
}

/// A key of a table with its position and value, see [`Table::entries`].
#[derive(Debug, Clone)]
pub(super) struct Entry<'a, 'i> {
    pub key: &'a str,
    pub key_span: Span,
    pub item: Item<'a, 'i>,
}

impl<'a, 'i> Table<'a, 'i> {
    pub fn root(doc: &'a Spanned<DeTable<'i>>) -> Self {
        Table {
            path: String::new(),
            table: doc.get_ref(),
            span: 0..0,
        }
    }

    /// Where this table is, for messages: `in [services.web]` or `at the top level`.
    fn location(&self) -> String {
        if self.path.is_empty() {
            "at the top level".to_owned()
        } else {
            format!("in [{}]", self.path)
        }
    }

    /// Reports every key that is not in `allowed`; `planned` keys get a note saying
    /// they are not supported yet.
    pub fn check_keys(&self, errs: &mut Errors, allowed: &[&str], planned: &[&str]) {
        for (key, _) in self.table.iter() {
            let name = key.get_ref().as_ref();
            if allowed.contains(&name) {
                continue;
            }
            let note = if planned.contains(&name) {
                format!(" ({name:?} is planned but not supported yet)")
            } else if let Some(close) = closest(name, allowed) {
                format!(" (did you mean {close:?}?)")
            } else {
                String::new()
            };
            errs.at(
                &key.span(),
                format!(
                    "unknown key {name:?} {}{note}; expected one of: {}",
                    self.location(),
                    allowed.join(", ")
                ),
            );
        }
    }

    pub fn get(&self, key: &str) -> Option<Item<'a, 'i>> {
        self.table.get(key).map(|value| Item {
            path: child_path(&self.path, key),
            value: value.get_ref(),
            span: value.span(),
        })
    }

    /// The position of `key` itself (not its value), if present.
    pub fn key_span(&self, key: &str) -> Option<Span> {
        self.table.get_key_value(key).map(|(k, _)| k.span())
    }

    /// All keys in file order.
    pub fn entries(&self) -> Vec<Entry<'a, 'i>> {
        let mut entries: Vec<Entry<'a, 'i>> = self
            .table
            .iter()
            .map(|(key, value)| Entry {
                key: key.get_ref().as_ref(),
                key_span: key.span(),
                item: Item {
                    path: child_path(&self.path, key.get_ref()),
                    value: value.get_ref(),
                    span: value.span(),
                },
            })
            .collect();
        entries.sort_by_key(|e| e.key_span.start);
        entries
    }

    /// Reports a missing required key at the table itself.
    pub fn missing(&self, errs: &mut Errors, key: &str, expected: &str) {
        errs.at(
            &self.span,
            format!(
                "{}: missing required key {key:?}; expected {expected}",
                self.path
            ),
        );
    }
}

impl<'a, 'i> Item<'a, 'i> {
    /// Reports `PATH: message` at this value.
    pub fn fail(&self, errs: &mut Errors, message: impl fmt::Display) {
        errs.at(&self.span, format!("{}: {message}", self.path));
    }

    /// Reports `PATH: expected EXPECTED, found TYPE VALUE` at this value.
    pub fn wrong_type(&self, errs: &mut Errors, expected: &str) {
        self.fail(
            errs,
            format!("expected {expected}, found {}", describe(self.value)),
        );
    }

    pub fn str(&self, errs: &mut Errors) -> Option<&'a str> {
        self.str_expecting(errs, "a string")
    }

    pub fn str_expecting(&self, errs: &mut Errors, expected: &str) -> Option<&'a str> {
        match self.value {
            DeValue::String(s) => Some(s.as_ref()),
            _ => {
                self.wrong_type(errs, expected);
                None
            }
        }
    }

    /// A string that is not empty or only white space.
    pub fn non_empty_str(&self, errs: &mut Errors, expected: &str) -> Option<&'a str> {
        let s = self.str_expecting(errs, expected)?;
        if s.trim().is_empty() {
            self.wrong_type(errs, expected);
            return None;
        }
        Some(s)
    }

    pub fn bool(&self, errs: &mut Errors) -> Option<bool> {
        match self.value {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(errs, "true or false");
                None
            }
        }
    }

    /// An integer in `min..=max`; the message names the range. A `max` of `u32::MAX` or
    /// more counts as "no upper bound" in the message.
    pub fn int_in(&self, errs: &mut Errors, min: i128, max: i128) -> Option<i128> {
        let unbounded = max >= i128::from(u32::MAX);
        let expected = match (unbounded, min) {
            (true, 0) => "a non-negative integer".to_owned(),
            (true, _) => format!("an integer of at least {min}"),
            (false, _) => format!("an integer from {min} to {max}"),
        };
        let n = match self.value {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok(),
            _ => None,
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) if unbounded && n > max => {
                self.fail(
                    errs,
                    format!("expected an integer of at most {max}, found integer {n}"),
                );
                None
            }
            _ => {
                self.wrong_type(errs, &expected);
                None
            }
        }
    }

    /// A `u32` of at least `min`.
    pub fn u32_from(&self, errs: &mut Errors, min: u32) -> Option<u32> {
        let n = self.int_in(errs, i128::from(min), i128::from(u32::MAX))?;
        u32::try_from(n).ok()
    }

    /// A string turned into a `T` by `parse`, whose error message (what was found, what
    /// is expected) is reported after the key path. `expected` is for a non-string.
    pub fn parse_str<T>(
        &self,
        errs: &mut Errors,
        expected: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let s = self.str_expecting(errs, expected)?;
        match parse(s) {
            Ok(v) => Some(v),
            Err(message) => {
                self.fail(errs, message);
                None
            }
        }
    }

    /// One of a fixed set of string values.
    pub fn choice<T: Copy>(&self, errs: &mut Errors, choices: &[(&str, T)]) -> Option<T> {
        let names: Vec<String> = choices
            .iter()
            .map(|(name, _)| format!("{name:?}"))
            .collect();
        let expected = format!("one of {}", names.join(", "));
        self.parse_str(errs, &expected, |s| {
            choices
                .iter()
                .find(|(name, _)| *name == s)
                .map(|(_, v)| *v)
                .ok_or_else(|| format!("expected {expected}, found {s:?}"))
        })
    }

    pub fn duration(&self, errs: &mut Errors) -> Option<Duration> {
        self.parse_str(
            errs,
            r#"a duration string like "2s" or "500ms""#,
            parse_duration,
        )
    }

    /// A duration greater than zero.
    pub fn positive_duration(&self, errs: &mut Errors) -> Option<Duration> {
        let d = self.duration(errs)?;
        if d.is_zero() {
            self.wrong_type(errs, "a duration greater than zero");
            return None;
        }
        Some(d)
    }

    /// A size string (`"64KiB"`) or a non-negative integer number of bytes.
    pub fn size(&self, errs: &mut Errors) -> Option<u64> {
        match self.value {
            DeValue::Integer(_) => {
                let n = self.int_in(errs, 0, i128::from(u64::MAX))?;
                u64::try_from(n).ok()
            }
            _ => self.parse_str(
                errs,
                r#"a size like "64KiB" or a number of bytes"#,
                parse_size,
            ),
        }
    }

    /// A size greater than zero.
    pub fn positive_size(&self, errs: &mut Errors) -> Option<u64> {
        let n = self.size(errs)?;
        if n == 0 {
            self.wrong_type(errs, "a size greater than zero");
            return None;
        }
        Some(n)
    }

    /// A path, made absolute against `base` (the config file's directory).
    pub fn path(&self, errs: &mut Errors, base: &Path) -> Option<PathBuf> {
        let s = self.non_empty_str(errs, "a non-empty path")?;
        Some(resolve(base, s))
    }

    /// The elements of an array, each named `PATH[INDEX]`.
    pub fn array(&self, errs: &mut Errors, expected: &str) -> Option<Vec<Item<'a, 'i>>> {
        match self.value {
            DeValue::Array(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(index, v)| Item {
                        path: format!("{}[{index}]", self.path),
                        value: v.get_ref(),
                        span: v.span(),
                    })
                    .collect(),
            ),
            _ => {
                self.wrong_type(errs, expected);
                None
            }
        }
    }

    /// Each element of an array parsed by `parse`; bad elements are reported and left out.
    pub fn array_of<T>(
        &self,
        errs: &mut Errors,
        expected: &str,
        mut parse: impl FnMut(&mut Errors, &Item<'a, 'i>) -> Option<T>,
    ) -> Option<Vec<T>> {
        let items = self.array(errs, expected)?;
        Some(items.iter().filter_map(|item| parse(errs, item)).collect())
    }

    pub fn table(&self, errs: &mut Errors, expected: &str) -> Option<Table<'a, 'i>> {
        match self.value {
            DeValue::Table(table) => Some(Table {
                path: self.path.clone(),
                table,
                span: self.span.clone(),
            }),
            _ => {
                self.wrong_type(errs, expected);
                None
            }
        }
    }
}

/// `base/p` without `.` components; `p` is kept as is when absolute. `..` stays, since
/// removing it lexically would be wrong across symbolic links.
pub(super) fn resolve(base: &Path, p: &str) -> PathBuf {
    base.join(p)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// `parent.key`, quoting keys that TOML would need quoted.
fn child_path(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// `string "two"`, `integer 3`, `array`, … for "found …" in messages.
pub(super) fn describe(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => {
            const MAX: usize = 60;
            if s.chars().count() > MAX {
                let head: String = s.chars().take(MAX).collect();
                format!("string {head:?}…")
            } else {
                format!("string {s:?}")
            }
        }
        DeValue::Integer(i) => format!("integer {i}"),
        DeValue::Float(f) => format!("float {f}"),
        DeValue::Boolean(b) => format!("boolean {b}"),
        DeValue::Datetime(d) => format!("datetime {d}"),
        DeValue::Array(items) if items.is_empty() => "an empty array".to_owned(),
        DeValue::Array(_) => "an array".to_owned(),
        DeValue::Table(_) => "a table".to_owned(),
    }
}

/// The allowed key closest to a misspelt one, if it is close enough to be a typo.
fn closest<'k>(name: &str, allowed: &[&'k str]) -> Option<&'k str> {
    allowed
        .iter()
        .map(|candidate| (edit_distance(name, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= 2.min(candidate.len() / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Turns byte offsets into 1-based lines and columns (in characters), walking the text
/// once when the offsets come in increasing order.
#[derive(Debug)]
pub(super) struct Locator<'t> {
    text: &'t str,
    /// Always at a character boundary.
    offset: usize,
    line: usize,
    col: usize,
}

impl<'t> Locator<'t> {
    pub fn new(text: &'t str) -> Self {
        Locator {
            text,
            offset: 0,
            line: 1,
            col: 1,
        }
    }

    pub fn line_col(&mut self, offset: usize) -> (usize, usize) {
        if offset < self.offset {
            *self = Locator::new(self.text);
        }
        let mut chars = self.text[self.offset..].chars();
        while self.offset < offset {
            let Some(c) = chars.next() else { break };
            self.offset += c.len_utf8();
            if c == '\n' {
                self.line += 1;
                self.col = 1;
            } else {
                self.col += 1;
            }
        }
        (self.line, self.col)
    }
}
