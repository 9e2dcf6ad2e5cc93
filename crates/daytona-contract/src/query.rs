//! Query strings and path segments as the API's server reads them:
//! percent-decoding, `+` as a space in queries, the last value of a repeated
//! scalar key, and the arrays of `key`, `key[]` and `key[N]`.

use std::collections::BTreeSet;

/// A query string's pairs, decoded (`+` is a space), in order.
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(raw: &str) -> Query {
        Query(
            raw.split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (percent_decode(&k.replace('+', " ")), percent_decode(&v.replace('+', " ")))
                })
                .collect(),
        )
    }

    /// The last value of a key (Express keeps an array for a repeated key;
    /// the scalar parameters here take one).
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, `key[]` or `key[N]`; `None` when there is none.
    pub(crate) fn list(&self, key: &str) -> Option<BTreeSet<String>> {
        let bracket = format!("{key}[");
        let values: BTreeSet<String> = self
            .0
            .iter()
            .filter(|(k, _)| k == key || (k.starts_with(&bracket) && k.ends_with(']')))
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
            .collect();
        (!values.is_empty()).then_some(values)
    }
}

/// `%XX` escapes decoded (a malformed one stays as it is); invalid UTF-8 is replaced.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
