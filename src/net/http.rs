//! Just enough HTTP/1.1 to proxy the Docker Engine API byte for byte:
//! reading message heads, knowing where a body ends (Content-Length,
//! chunked, or end of connection), and copying bodies as they arrive. A
//! full HTTP stack would re-frame what it forwards; this copies the bytes.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A head larger than this is refused (431) rather than buffered.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Bodies read whole (create requests and responses) are bounded.
pub(crate) const MAX_BUFFERED_BODY: usize = 16 * 1024 * 1024;
const MAX_HEADERS: usize = 128;

#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("connection closed")]
    Closed,
    #[error("message head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("body larger than {MAX_BUFFERED_BODY} bytes")]
    BodyTooLarge,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes the connection (responses only).
    UntilClose,
}

/// A parsed message head, with its raw bytes kept for forwarding.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) raw: Vec<u8>,
    /// Request: method; response: empty.
    pub(crate) method: String,
    /// Request: path with query; response: empty.
    pub(crate) target: String,
    /// Response: status code; request: 0.
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    pub(crate) fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_slice())
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers.iter().filter(|(key, _)| key.eq_ignore_ascii_case(name)).any(|(_, value)| {
            String::from_utf8_lossy(value).split(',').any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    }

    /// `Connection: Upgrade` with an `Upgrade` header (attach, exec, BuildKit session).
    pub(crate) fn is_upgrade(&self) -> bool {
        self.header("upgrade").is_some() && self.header_has_token("connection", "upgrade")
    }

    pub(crate) fn wants_close(&self) -> bool {
        self.header_has_token("connection", "close")
    }

    /// The body framing of a request.
    pub(crate) fn request_framing(&self) -> Result<Framing, HttpError> {
        if self.header_has_token("transfer-encoding", "chunked") {
            return Ok(Framing::Chunked);
        }
        match self.content_length()? {
            Some(length) => Ok(Framing::Length(length)),
            None => Ok(Framing::None),
        }
    }

    /// The body framing of a response to a request with `request_method`.
    pub(crate) fn response_framing(&self, request_method: &str) -> Result<Framing, HttpError> {
        if request_method.eq_ignore_ascii_case("HEAD")
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
        {
            return Ok(Framing::None);
        }
        if self.header_has_token("transfer-encoding", "chunked") {
            return Ok(Framing::Chunked);
        }
        match self.content_length()? {
            Some(length) => Ok(Framing::Length(length)),
            None => Ok(Framing::UntilClose),
        }
    }

    fn content_length(&self) -> Result<Option<u64>, HttpError> {
        match self.header("content-length") {
            None => Ok(None),
            Some(value) => std::str::from_utf8(value)
                .ok()
                .and_then(|text| text.trim().parse().ok())
                .map(Some)
                .ok_or_else(|| HttpError::Malformed("bad Content-Length".to_string())),
        }
    }

    /// The head again with framing headers replaced by `Content-Length: length`.
    pub(crate) fn with_content_length(&self, length: usize) -> Vec<u8> {
        self.rewritten(None, None, Some(length))
    }

    /// The request head again with, where given, another target, another
    /// `Host`, and framing replaced by a `Content-Length`. Other header lines
    /// are kept byte for byte as they were sent (heads hold no bare line
    /// feed: [`parse_head`] refuses those).
    pub(crate) fn rewritten(&self, target: Option<&str>, host: Option<&str>, content_length: Option<usize>) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.raw.len() + 64);
        let mut lines = self.raw.split(|byte| *byte == b'\n').map(|line| line.strip_suffix(b"\r").unwrap_or(line));
        if let Some(first) = lines.next() {
            match target {
                Some(target) => {
                    let version = first.rsplit(|byte| *byte == b' ').next().unwrap_or(b"HTTP/1.1");
                    out.extend_from_slice(format!("{} {target} ", self.method).as_bytes());
                    out.extend_from_slice(version);
                }
                None => out.extend_from_slice(first),
            }
            out.extend_from_slice(b"\r\n");
        }
        for line in lines.filter(|line| !line.is_empty()) {
            let name = line.split(|byte| *byte == b':').next().unwrap_or_default().trim_ascii();
            let is = |header: &str| name.eq_ignore_ascii_case(header.as_bytes());
            let framing = is("content-length") || is("transfer-encoding");
            if (framing && content_length.is_some()) || (host.is_some() && is("host")) {
                continue;
            }
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(host) = host {
            out.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
        }
        if let Some(length) = content_length {
            out.extend_from_slice(format!("Content-Length: {length}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// A reader with a buffer of bytes read but not yet consumed.
pub(crate) struct Buffered<R> {
    pub(crate) inner: R,
    pub(crate) buffer: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Buffered<R> {
    pub(crate) fn new(inner: R) -> Self {
        Buffered { inner, buffer: Vec::new() }
    }

    /// Reads more into the buffer; 0 at end of file.
    pub(crate) async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let count = self.inner.read(&mut chunk).await?;
        self.buffer.extend_from_slice(&chunk[..count]);
        Ok(count)
    }

    /// Reads one message head (request when `request`, else response).
    pub(crate) async fn read_head(&mut self, request: bool) -> Result<Head, HttpError> {
        loop {
            if let Some(end) = find_head_end(&self.buffer) {
                let raw: Vec<u8> = self.buffer.drain(..end).collect();
                return parse_head(raw, request);
            }
            if self.buffer.len() > MAX_HEAD {
                return Err(HttpError::HeadTooLarge);
            }
            if self.fill().await? == 0 {
                return Err(if self.buffer.is_empty() {
                    HttpError::Closed
                } else {
                    HttpError::Malformed("connection closed inside a message head".to_string())
                });
            }
        }
    }

    /// Copies a body with `framing` to `sink` byte for byte, as it arrives.
    /// With `keep`, also returns the decoded body (bounded).
    pub(crate) async fn copy_body<W: AsyncWrite + Unpin>(
        &mut self,
        framing: Framing,
        sink: &mut W,
        keep: bool,
    ) -> Result<Option<Vec<u8>>, HttpError> {
        let mut kept = keep.then(Vec::new);
        let mut keep_decoded = |bytes: &[u8]| keep_bytes(kept.as_mut(), bytes);
        let end = self.copy_framed(framing, sink, &mut keep_decoded, false).await?;
        debug_assert!(end.is_empty(), "nothing is held back unless asked");
        Ok(kept)
    }

    /// Copies a body like [`Buffered::copy_body`], showing `observe` the
    /// decoded bytes as they pass, but holds back the end of a chunked body
    /// (its last chunk and trailers) and returns it: the client does not
    /// see the answer end until the caller has acted on what it saw.
    pub(crate) async fn copy_body_observed<W: AsyncWrite + Unpin>(
        &mut self,
        framing: Framing,
        sink: &mut W,
        observe: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<Vec<u8>, HttpError> {
        let mut observe_all = |bytes: &[u8]| {
            observe(bytes);
            Ok(())
        };
        self.copy_framed(framing, sink, &mut observe_all, true).await
    }

    async fn copy_framed<W: AsyncWrite + Unpin>(
        &mut self,
        framing: Framing,
        sink: &mut W,
        observe: &mut (dyn FnMut(&[u8]) -> Result<(), HttpError> + Send),
        hold_end: bool,
    ) -> Result<Vec<u8>, HttpError> {
        match framing {
            Framing::None => {}
            Framing::Length(length) => self.copy_exact(length, sink, observe).await?,
            Framing::UntilClose => loop {
                if self.buffer.is_empty() && self.fill().await? == 0 {
                    break;
                }
                let bytes: Vec<u8> = self.buffer.drain(..).collect();
                observe(&bytes)?;
                sink.write_all(&bytes).await?;
                sink.flush().await?;
            },
            Framing::Chunked => loop {
                let mut held = Vec::new();
                let line = match hold_end {
                    true => self.read_line(&mut held).await?,
                    false => self.read_line(sink).await?,
                };
                let size_text = String::from_utf8_lossy(&line);
                let size_text = size_text.trim_end_matches("\r\n").split(';').next().unwrap_or("").trim().to_string();
                let size = u64::from_str_radix(&size_text, 16)
                    .map_err(|_| HttpError::Malformed(format!("bad chunk size {size_text:?}")))?;
                if size == 0 {
                    // Trailers, then the blank line that ends the body.
                    loop {
                        let trailer = match hold_end {
                            true => self.read_line(&mut held).await?,
                            false => self.read_line(sink).await?,
                        };
                        if trailer == b"\r\n" {
                            break;
                        }
                    }
                    sink.flush().await?;
                    return Ok(held);
                }
                sink.write_all(&held).await?;
                self.copy_exact(size, sink, observe).await?;
                let end = self.read_line(sink).await?;
                if end != b"\r\n" {
                    return Err(HttpError::Malformed("chunk not followed by CRLF".to_string()));
                }
                sink.flush().await?;
            },
        }
        Ok(Vec::new())
    }

    async fn copy_exact<W: AsyncWrite + Unpin>(
        &mut self,
        mut remaining: u64,
        sink: &mut W,
        observe: &mut (dyn FnMut(&[u8]) -> Result<(), HttpError> + Send),
    ) -> Result<(), HttpError> {
        while remaining > 0 {
            if self.buffer.is_empty() && self.fill().await? == 0 {
                return Err(HttpError::Malformed("connection closed inside a body".to_string()));
            }
            let take = (remaining as usize).min(self.buffer.len());
            let bytes: Vec<u8> = self.buffer.drain(..take).collect();
            observe(&bytes)?;
            sink.write_all(&bytes).await?;
            remaining -= take as u64;
        }
        sink.flush().await?;
        Ok(())
    }

    /// Reads one CRLF-terminated line, forwarding it to `sink` too.
    async fn read_line<W: AsyncWrite + Unpin>(&mut self, sink: &mut W) -> Result<Vec<u8>, HttpError> {
        loop {
            if let Some(index) = self.buffer.windows(2).position(|window| window == b"\r\n") {
                let line: Vec<u8> = self.buffer.drain(..index + 2).collect();
                sink.write_all(&line).await?;
                return Ok(line);
            }
            if self.buffer.len() > MAX_HEAD {
                return Err(HttpError::Malformed("chunk line too long".to_string()));
            }
            if self.fill().await? == 0 {
                return Err(HttpError::Malformed("connection closed inside a chunked body".to_string()));
            }
        }
    }
}

fn keep_bytes(kept: Option<&mut Vec<u8>>, bytes: &[u8]) -> Result<(), HttpError> {
    if let Some(kept) = kept {
        if kept.len() + bytes.len() > MAX_BUFFERED_BODY {
            return Err(HttpError::BodyTooLarge);
        }
        kept.extend_from_slice(bytes);
    }
    Ok(())
}

fn find_head_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(4).position(|window| window == b"\r\n\r\n").map(|index| index + 4)
}

/// A head is read up to its first CRLF CRLF, while httparse also takes a
/// bare line feed for a line's end. Where they differ, what we read and
/// what the other side reads disagree on the headers (a `Content-Length`
/// inside another header's line) or on where the message ends, and the
/// bytes we forward are read upstream as another message: such heads are
/// refused. No Docker or Daytona client sends a bare line feed.
fn check_complete(status: httparse::Status<usize>, raw: &[u8]) -> Result<(), HttpError> {
    let bare_line_feed =
        raw.iter().enumerate().any(|(index, byte)| *byte == b'\n' && (index == 0 || raw[index - 1] != b'\r'));
    match status {
        _ if bare_line_feed => Err(HttpError::Malformed("a bare line feed in the message head".to_string())),
        httparse::Status::Complete(length) if length == raw.len() => Ok(()),
        httparse::Status::Complete(_) => Err(HttpError::Malformed("the message head ends early".to_string())),
        httparse::Status::Partial => Err(HttpError::Malformed("incomplete head".to_string())),
    }
}

fn parse_head(raw: Vec<u8>, request: bool) -> Result<Head, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let malformed = |error: httparse::Error| HttpError::Malformed(error.to_string());
    let (method, target, status, parsed) = if request {
        let mut parsed = httparse::Request::new(&mut headers);
        check_complete(parsed.parse(&raw).map_err(malformed)?, &raw)?;
        let method = parsed.method.unwrap_or_default().to_string();
        let target = parsed.path.unwrap_or_default().to_string();
        (method, target, 0, parsed.headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect())
    } else {
        let mut parsed = httparse::Response::new(&mut headers);
        check_complete(parsed.parse(&raw).map_err(malformed)?, &raw)?;
        let status = parsed.code.unwrap_or_default();
        (
            String::new(),
            String::new(),
            status,
            parsed.headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect(),
        )
    };
    Ok(Head { raw, method, target, status, headers: parsed })
}

/// A minimal response benchwarden itself sends (errors), then closes.
pub(crate) fn error_response(status: u16, reason: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({ "message": format!("benchwarden proxy: {message}") }).to_string();
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunked_bodies_are_copied_verbatim_and_decoded() {
        let wire = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let mut reader = Buffered::new(&wire[..]);
        let mut copied = Vec::new();
        let decoded = reader.copy_body(Framing::Chunked, &mut copied, true).await.unwrap();
        assert_eq!(decoded.unwrap(), b"Wikipedia");
        assert_eq!(copied, &wire[..wire.len() - 4]);
        assert_eq!(reader.buffer, b"NEXT");
    }

    #[tokio::test]
    async fn heads_parse_and_frame() {
        let wire = b"POST /v1.41/containers/create?name=x HTTP/1.1\r\nHost: docker\r\nContent-Length: 2\r\n\r\n{}";
        let mut reader = Buffered::new(&wire[..]);
        let head = reader.read_head(true).await.unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.target, "/v1.41/containers/create?name=x");
        assert_eq!(head.request_framing().unwrap(), Framing::Length(2));
        let rewritten = String::from_utf8(head.with_content_length(10)).unwrap();
        assert!(rewritten.ends_with("Host: docker\r\nContent-Length: 10\r\n\r\n"), "{rewritten}");
    }

    /// Found by the proxy fuzzer (`intercept::fuzz`): a bare line feed ended
    /// the head for httparse, hiding `Transfer-Encoding: chunked` from us
    /// while the raw head, forwarded, still carried it.
    #[tokio::test]
    async fn a_head_cut_short_by_a_bare_line_feed_is_refused() {
        for wire in [
            &b"POST /containers/create HTTP/1.1\r\nHost: d\r\n\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
                [..],
            &b"HTTP/1.1 201 Created\r\nServer: d\n\nContent-Length: 2\r\n\r\n{}"[..],
            // A Content-Length hidden inside another header's line, for us, not for httparse.
            &b"POST /volumes/create HTTP/1.1\r\nHost: d\r\nX-A: b\xec\nContent-Length: 2\r\n\r\n{}"[..],
        ] {
            let request = wire.starts_with(b"POST");
            match Buffered::new(wire).read_head(request).await {
                Err(HttpError::Malformed(message)) => assert!(message.contains("bare line feed"), "{message}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_endless_head_is_refused() {
        let wire = vec![b'a'; MAX_HEAD * 2];
        let mut reader = Buffered::new(&wire[..]);
        assert!(matches!(reader.read_head(true).await, Err(HttpError::HeadTooLarge)));
    }

    #[test]
    fn responses_to_head_and_204_have_no_body() {
        let head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n".to_vec(), false).unwrap();
        assert_eq!(head.response_framing("HEAD").unwrap(), Framing::None);
        assert_eq!(head.response_framing("GET").unwrap(), Framing::Length(3));
        let until_close = parse_head(b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), false).unwrap();
        assert_eq!(until_close.response_framing("GET").unwrap(), Framing::UntilClose);
    }
}
