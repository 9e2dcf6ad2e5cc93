//! The image calls of the Docker proxy, as pure functions: which requests
//! make images (`POST /build`, and `POST /images/create`, a pull with
//! `fromImage` or an import with `fromSrc`), the owner labels added to a
//! build's `labels` query parameter, and what the answer's JSON stream says
//! was made (the id, whether a pull found the image already there, or an
//! error). The proxy streams the answer through [`ImageCall::observe`] and
//! records what [`ImageCall::finish`] returns.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::resource::ImageOrigin;

/// Longest answer line kept while looking for what it says; Docker's
/// progress lines are short, and the lines we look for are shorter still.
const MAX_LINE: usize = 64 * 1024;

/// One call that makes an image, and what its answer said so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageCall {
    pub(crate) origin: ImageOrigin,
    /// The request target as the engine must see it (a build's with owner labels).
    pub(crate) upstream_target: String,
    /// Tags the request gives the image.
    pub(crate) tags: Vec<String>,
    line: Vec<u8>,
    /// The id the answer named: full (`sha256:…`) or short (`Successfully built …`).
    id: Option<String>,
    /// A pull answered "Image is up to date": the engine had it already.
    up_to_date: bool,
    failed: bool,
}

/// What an image call made, once its answer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MadeImage {
    pub(crate) origin: ImageOrigin,
    /// An id (full or short) or a reference, for the engine to resolve into the full id.
    pub(crate) reference: String,
    pub(crate) tags: Vec<String>,
    pub(crate) existed_before: bool,
}

impl ImageCall {
    /// The image call a request is, if it is one (under any `/v1.xx`
    /// prefix): `path` is the target's path without the version prefix.
    /// A build gets `labels` (the owner labels) merged into its `labels`
    /// parameter, so what it builds can be found by label after a crash.
    pub(crate) fn of(method: &str, path: &str, target: &str, labels: &BTreeMap<String, String>) -> Option<Self> {
        if !method.eq_ignore_ascii_case("POST") {
            return None;
        }
        let query = target.split_once('?').map(|(_, query)| query).unwrap_or("");
        let params = parse_query(query);
        let values = |key: &str| -> Vec<String> {
            params.iter().filter(|(name, _)| name == key).map(|(_, value)| value.clone()).collect()
        };
        let first = |key: &str| values(key).into_iter().next().filter(|value| !value.is_empty());
        let (origin, tags, upstream_target) = match path {
            "/build" => {
                let tags = values("t").into_iter().filter(|tag| !tag.is_empty()).collect();
                (ImageOrigin::Built, tags, labelled_build_target(target, labels))
            }
            "/images/create" if first("fromSrc").is_some() => {
                let tags = first("repo").map(|repo| vec![with_tag(&repo, first("tag").as_deref())]);
                (ImageOrigin::Imported, tags.unwrap_or_default(), target.to_string())
            }
            "/images/create" => {
                let image = first("fromImage")?;
                (ImageOrigin::Pulled, vec![with_tag(&image, first("tag").as_deref())], target.to_string())
            }
            _ => return None,
        };
        Some(ImageCall { origin, upstream_target, tags, line: Vec::new(), id: None, up_to_date: false, failed: false })
    }

    /// Reads answer bytes as they pass (any split), one JSON message a line.
    pub(crate) fn observe(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                let line = std::mem::take(&mut self.line);
                self.read_line(&line);
            } else if self.line.len() < MAX_LINE {
                self.line.push(byte);
            }
        }
    }

    fn read_line(&mut self, line: &[u8]) {
        let Ok(message) = serde_json::from_slice::<Value>(line.trim_ascii()) else {
            return;
        };
        if message.get("error").is_some() || message.get("errorDetail").is_some() {
            self.failed = true;
        }
        // The legacy builder and BuildKit both end with {"aux":{"ID":"sha256:…"}}.
        if let Some(id) = message.pointer("/aux/ID").and_then(Value::as_str) {
            self.id = Some(id.to_string());
        }
        if let Some(stream) = message.get("stream").and_then(Value::as_str) {
            if let Some(short) = stream.trim().strip_prefix("Successfully built ") {
                self.id.get_or_insert_with(|| short.trim().to_string());
            }
        }
        if let Some(status) = message.get("status").and_then(Value::as_str) {
            self.read_status(status.trim());
        }
    }

    fn read_status(&mut self, status: &str) {
        match self.origin {
            // An import answers with the new image's id as its status.
            ImageOrigin::Imported if is_image_id(status) => self.id = Some(status.to_string()),
            ImageOrigin::Pulled if status.starts_with("Status: Image is up to date for ") => self.up_to_date = true,
            _ => {}
        }
    }

    /// What the call made, when its answer said it succeeded. A build or
    /// import names its id; a pull is resolved by its reference.
    pub(crate) fn finish(mut self) -> Option<MadeImage> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.read_line(&line);
        }
        if self.failed {
            return None;
        }
        let reference = match self.origin {
            ImageOrigin::Pulled => self.id.or_else(|| self.tags.first().cloned())?,
            ImageOrigin::Built | ImageOrigin::Imported => self.id?,
        };
        Some(MadeImage { origin: self.origin, reference, tags: self.tags, existed_before: self.up_to_date })
    }
}

fn is_image_id(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|byte| byte.is_ascii_hexdigit()))
}

/// `name` with `tag`, unless the name carries a tag or digest already
/// (a tag is after the last `/`, a digest after `@`).
fn with_tag(name: &str, tag: Option<&str>) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    match tag {
        Some(tag) if !last.contains(':') && !name.contains('@') => format!("{name}:{tag}"),
        _ => name.to_string(),
    }
}

/// The build target with the owner labels merged into its `labels`
/// parameter (a JSON map; the harness's own labels are kept, ours win).
/// A `labels` value that is not a JSON object is left as sent: the engine
/// refuses it, as it would without us.
fn labelled_build_target(target: &str, labels: &BTreeMap<String, String>) -> String {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut pairs: Vec<(String, String)> = split_query(query).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let position = pairs.iter().position(|(key, _)| percent_decode(key) == "labels");
    let existing = position.map(|index| percent_decode(&pairs[index].1)).filter(|text| !text.is_empty());
    let mut map = match existing.as_deref().map(serde_json::from_str::<Value>) {
        None => serde_json::Map::new(),
        Some(Ok(Value::Object(map))) => map,
        Some(_) => return target.to_string(),
    };
    for (key, value) in labels {
        map.insert(key.clone(), Value::String(value.clone()));
    }
    let encoded = percent_encode(&Value::Object(map).to_string());
    match position {
        Some(index) => pairs[index].1 = encoded,
        None => pairs.push(("labels".to_string(), encoded)),
    }
    let query: Vec<String> = pairs
        .iter()
        .map(|(key, value)| if value.is_empty() && !key.is_empty() { key.clone() } else { format!("{key}={value}") })
        .collect();
    format!("{path}?{}", query.join("&"))
}

fn split_query(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query.split('&').filter(|pair| !pair.is_empty()).map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// The query's parameters, decoded as Go's `url.ParseQuery` does.
pub(crate) fn parse_query(query: &str) -> Vec<(String, String)> {
    split_query(query).map(|(key, value)| (percent_decode(key), percent_decode(value))).collect()
}

/// `%XX` escapes and `+` for a space; a malformed escape is kept as text.
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|byte| (*byte as char).to_digit(16));
        match bytes[index] {
            b'%' => match (hex(index + 1), hex(index + 2)) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    index += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Escapes as Go's `url.QueryEscape`: unreserved characters stay, a space is `+`.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(byte as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn owner() -> BTreeMap<String, String> {
        BTreeMap::from([("benchwarden.run".to_string(), "r1".to_string())])
    }

    fn call(target: &str) -> Option<ImageCall> {
        let path = target.split('?').next().unwrap();
        ImageCall::of("POST", path, target, &owner())
    }

    const ID: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn builds_pulls_and_imports_are_told_apart() {
        let build = call("/build?t=tb__hello__client&t=x%3A2&labels=%7B%22mine%22%3A%22yes%22%7D&q=1").unwrap();
        assert_eq!(build.origin, ImageOrigin::Built);
        assert_eq!(build.tags, ["tb__hello__client", "x:2"]);
        let labels = parse_query(build.upstream_target.split_once('?').unwrap().1)
            .into_iter()
            .find(|(key, _)| key == "labels")
            .unwrap()
            .1;
        let labels: Value = serde_json::from_str(&labels).unwrap();
        assert_eq!(labels["mine"], "yes");
        assert_eq!(labels["benchwarden.run"], "r1");
        assert!(build.upstream_target.contains("t=x%3A2&"), "other parameters pass as sent");
        let unlabelled = call("/build?t=a").unwrap();
        assert!(unlabelled.upstream_target.starts_with("/build?t=a&labels=%7B%22benchwarden.run%22"));
        let pull = call("/images/create?fromImage=debian&tag=bookworm").unwrap();
        assert_eq!((pull.origin, pull.tags.clone()), (ImageOrigin::Pulled, vec!["debian:bookworm".to_string()]));
        let pull = call("/images/create?fromImage=localhost%3A5000%2Fx%3A1&tag=latest").unwrap();
        assert_eq!(pull.tags, ["localhost:5000/x:1"]);
        let import = call("/images/create?fromSrc=-&repo=mine&tag=v1").unwrap();
        assert_eq!((import.origin, import.tags.clone()), (ImageOrigin::Imported, vec!["mine:v1".to_string()]));
        assert_eq!(call("/images/create?fromSrc=-").unwrap().tags, Vec::<String>::new());
        assert!(call("/images/create").is_none());
        assert!(call("/images/x/tag?repo=y").is_none());
        assert!(ImageCall::of("GET", "/build", "/build", &owner()).is_none());
    }

    #[test]
    fn a_labels_value_that_is_no_json_object_is_left_to_the_engine() {
        assert_eq!(call("/build?labels=%5B1%5D").unwrap().upstream_target, "/build?labels=%5B1%5D");
    }

    #[test]
    fn a_build_answer_names_its_image_by_aux_or_by_its_last_line() {
        let mut build = call("/build?t=a").unwrap();
        build.observe(b"{\"stream\":\"Step 1/2 : FROM scratch\\n\"}\r\n{\"aux\":{\"ID\":\"");
        build.observe(format!("{ID}\"}}}}\r\n{{\"stream\":\"Successfully built 0123456789ab\\n\"}}\r\n").as_bytes());
        let made = build.finish().unwrap();
        assert_eq!((made.reference.as_str(), made.existed_before), (ID, false));
        let mut legacy = call("/build").unwrap();
        legacy.observe(b"{\"stream\":\"Successfully built 0123456789ab\\n\"}");
        assert_eq!(legacy.finish().unwrap().reference, "0123456789ab");
        let mut buildkit_trace = call("/build").unwrap();
        buildkit_trace.observe(b"{\"id\":\"moby.buildkit.trace\",\"aux\":\"AAAA\"}\n");
        assert_eq!(buildkit_trace.finish(), None, "no id, nothing to record");
        let mut failed = call("/build").unwrap();
        failed.observe(
            format!("{{\"aux\":{{\"ID\":\"{ID}\"}}}}\n{{\"errorDetail\":{{\"message\":\"x\"}},\"error\":\"x\"}}\n")
                .as_bytes(),
        );
        assert_eq!(failed.finish(), None);
    }

    #[test]
    fn a_pull_that_found_the_image_up_to_date_existed_before() {
        let mut pull = call("/images/create?fromImage=busybox&tag=latest").unwrap();
        pull.observe(b"{\"status\":\"Pulling from library/busybox\",\"id\":\"latest\"}\r\n");
        pull.observe(b"{\"status\":\"Status: Image is up to date for busybox:latest\"}\r\n");
        let made = pull.finish().unwrap();
        assert_eq!((made.reference.as_str(), made.existed_before), ("busybox:latest", true));
        let mut fresh = call("/images/create?fromImage=busybox&tag=latest").unwrap();
        fresh.observe(b"{\"status\":\"Status: Downloaded newer image for busybox:latest\"}\r\n");
        assert!(!fresh.finish().unwrap().existed_before);
        let mut denied = call("/images/create?fromImage=busybox&tag=latest").unwrap();
        denied.observe(b"{\"message\":\"pull access denied\"}");
        denied.observe(b"\n{\"error\":\"pull access denied\"}\n");
        assert_eq!(denied.finish(), None);
    }

    #[test]
    fn an_import_answers_with_its_id_as_status() {
        let mut import = call("/images/create?fromSrc=-&repo=mine").unwrap();
        import.observe(format!("{{\"status\":\"{ID}\"}}\r\n").as_bytes());
        assert_eq!(import.finish().unwrap().reference, ID);
    }

    proptest! {
        #[test]
        fn encoding_then_decoding_gives_the_text_back(text in any::<String>()) {
            prop_assert_eq!(percent_decode(&percent_encode(&text)), text);
        }

        #[test]
        fn any_query_parses_without_panicking(query in any::<String>()) {
            let _ = parse_query(&query);
            let _ = call(&format!("/build?{query}"));
            let _ = call(&format!("/images/create?{query}"));
        }

        #[test]
        fn owner_labels_survive_any_harness_labels(labels in proptest::collection::btree_map(any::<String>(), any::<String>(), 0..4)) {
            let sent = percent_encode(&serde_json::to_string(&labels).unwrap());
            let build = call(&format!("/build?labels={sent}")).unwrap();
            let (_, query) = build.upstream_target.split_once('?').unwrap();
            let text = parse_query(query).into_iter().find(|(key, _)| key == "labels").unwrap().1;
            let merged: BTreeMap<String, String> = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(merged.get("benchwarden.run").map(String::as_str), Some("r1"));
            for (key, value) in labels.iter().filter(|(key, _)| key.as_str() != "benchwarden.run") {
                prop_assert_eq!(merged.get(key), Some(value));
            }
        }

        #[test]
        fn any_answer_bytes_in_any_split_are_read_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512), split in 0usize..512) {
            let mut build = call("/build").unwrap();
            let split = split.min(bytes.len());
            build.observe(&bytes[..split]);
            build.observe(&bytes[split..]);
            let _ = build.finish();
        }
    }
}
