//! The proxy engine both interceptors share: accept a client connection,
//! read each request head, let the policy rewrite create calls (label the
//! body, refuse it past a hard limit, record the answer's id in the ledger
//! before passing the answer back), and pass everything else through byte
//! for byte: keep-alive, chunked and streaming bodies both ways, and
//! hijacked or upgraded connections spliced raw.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio_util::task::TaskTracker;

use super::images::{ImageCall, MadeImage};
use crate::events::{Event, Events};
use crate::ledger::Ledger;
use crate::limits::LiveResources;
use crate::net::http::{error_response, Buffered, Framing, Head, HttpError};
use crate::net::{BoxRead, BoxWrite, Upstream};
use crate::resource::{Kind, RecordedImage, ResourceRef};

/// What differs between the Docker and the Daytona proxy.
pub(crate) trait Policy: Send + Sync + 'static {
    /// The kind a request creates, if it is a create call to intercept.
    fn create_kind(&self, head: &Head) -> Option<Kind>;
    /// The create body with owner labels (and defaults) added; `Err` for a body we refuse.
    fn rewrite_create_body(&self, kind: Kind, body: &[u8]) -> Result<Vec<u8>, String>;
    /// The id and name a successful create answered with.
    fn created(&self, kind: Kind, request_target: &str, request_body: &[u8], answer: &[u8])
        -> Option<(String, String)>;
    /// The request head as the upstream must see it (path prefix, Host);
    /// with `content_length`, framing replaced by that length.
    fn upstream_head(&self, head: &Head, content_length: Option<usize>) -> Vec<u8> {
        match content_length {
            Some(length) => head.with_content_length(length),
            None => head.raw.clone(),
        }
    }
    /// Endpoints that hijack the connection with a plain 200 (Docker's attach and exec).
    fn may_hijack(&self, _head: &Head) -> bool {
        false
    }
    /// The answer to a create refused by a hard limit, in the API's own
    /// error shape; 429, so that a client that backs off may try again.
    fn refusal(&self, _head: &Head, message: &str) -> Vec<u8> {
        error_response(429, "Too Many Requests", message)
    }
    /// A call that makes an image (Docker's builds, pulls and imports), whose answer is watched.
    fn image_call(&self, _head: &Head) -> Option<ImageCall> {
        None
    }
}

/// A create body with `labels` merged into its `field` object (made when
/// missing or null), then `finish` applied to the whole object. `Err` for a
/// body that is not a JSON object, which the proxy refuses with a 400.
pub(crate) fn label_create_body(
    body: &[u8],
    field: &str,
    labels: &BTreeMap<String, String>,
    finish: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> Result<Vec<u8>, String> {
    let text = if body.is_empty() { b"{}".as_slice() } else { body };
    let mut value: Value = serde_json::from_slice(text).map_err(|error| format!("create body is not JSON: {error}"))?;
    let object = value.as_object_mut().ok_or("create body is not a JSON object")?;
    let slot = object.entry(field).or_insert_with(|| Value::Object(Default::default()));
    if slot.is_null() {
        *slot = Value::Object(Default::default());
    }
    let existing = slot.as_object_mut().ok_or_else(|| format!("{field} is not a JSON object"))?;
    for (key, value) in labels {
        existing.insert(key.clone(), Value::String(value.clone()));
    }
    finish(object);
    serde_json::to_vec(&value).map_err(|error| error.to_string())
}

/// Who owns what the proxied clients create, where that is recorded, and
/// the run's live count it adds to.
pub(crate) struct Recorder {
    pub(crate) run_id: String,
    pub(crate) task_id: String,
    pub(crate) ledger: Ledger,
    pub(crate) events: Events,
    pub(crate) live: LiveResources,
    /// Creates forwarded and not yet answered: a proxy that stops waits for
    /// them, so that a create the daemon carries out after the harness died
    /// is still recorded before the task's teardown looks.
    pub(crate) creates: TaskTracker,
}

/// How long a stopping proxy waits for the answers of creates in flight.
pub(crate) const CREATE_ANSWER_WAIT: Duration = Duration::from_secs(30);

/// Waits (at most [`CREATE_ANSWER_WAIT`]) for the creates `creates` has in flight.
pub(crate) async fn finish_creates(creates: &TaskTracker, task: &str) {
    creates.close();
    if tokio::time::timeout(CREATE_ANSWER_WAIT, creates.wait()).await.is_err() {
        tracing::warn!(
            "task {task}: a create through its proxy had no answer within {}s; teardown goes on, and finds \
             what it made by its owner labels",
            CREATE_ANSWER_WAIT.as_secs()
        );
    }
}

impl Recorder {
    async fn record(&self, resource: ResourceRef) {
        let kind = resource.kind;
        self.live.add(&self.task_id, kind, &resource.id);
        self.events.emit(Event::Created { resource: &resource });
        // Committed before the client learns the id: a crash from here on leaves a record.
        if let Err(error) = self.ledger.record_resources(&self.run_id, &self.task_id, vec![resource]).await {
            tracing::error!("task {}: cannot record a new {kind} in the ledger: {error}", self.task_id);
        }
    }
}

impl Recorder {
    /// Records an image the task made, once the engine has named its full id.
    async fn record_image(&self, made: MadeImage, upstream: &Upstream) {
        let Some(id) = image_id(upstream, &made.reference).await else {
            tracing::warn!("task {}: cannot find the image {} it made, to record it", self.task_id, made.reference);
            return;
        };
        let image = RecordedImage { id, tags: made.tags, origin: made.origin, existed_before: made.existed_before };
        self.events.emit(Event::ImageRecorded { image: &image, task: &self.task_id });
        if let Err(error) = self.ledger.record_image(&self.run_id, &self.task_id, image).await {
            tracing::error!("task {}: cannot record an image in the ledger: {error}", self.task_id);
        }
    }
}

/// The full id (`sha256:…`) of an image named by id, short id or
/// reference, asked of the engine on a connection of its own.
async fn image_id(upstream: &Upstream, reference: &str) -> Option<String> {
    let (read, mut write) = upstream.connect().await.ok()?;
    let request = format!("GET /images/{reference}/json HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n");
    write.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Buffered::new(read);
    let head = answer.read_head(false).await.ok()?;
    let framing = head.response_framing("GET").ok()?;
    let body = answer.copy_body(framing, &mut tokio::io::sink(), true).await.ok()??;
    if head.status != 200 {
        return None;
    }
    let value: Value = serde_json::from_slice(&body).ok()?;
    value.get("Id")?.as_str().map(str::to_string)
}

/// Accepts connections with `accept` and serves each on its own task until
/// the returned handle is aborted, which also ends every connection.
pub(crate) fn spawn_server<P, A, Fut>(
    mut accept: A,
    upstream: Upstream,
    policy: P,
    recorder: Recorder,
) -> tokio::task::JoinHandle<()>
where
    P: Policy,
    A: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<(BoxRead, BoxWrite)>> + Send,
{
    let (policy, recorder) = (Arc::new(policy), Arc::new(recorder));
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = accept() => match accepted {
                    Ok((read, write)) => {
                        connections.spawn(serve(read, write, upstream.clone(), Arc::clone(&policy), Arc::clone(&recorder)));
                    }
                    Err(error) => tracing::warn!("proxy: accept failed: {error}"),
                },
                // Reap finished connections so the set does not grow with a long task.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}

enum Next {
    KeepAlive,
    Close,
}

/// Serves one client connection until either side closes it.
pub(crate) async fn serve<P: Policy>(
    client_read: BoxRead,
    mut client_out: BoxWrite,
    upstream: Upstream,
    policy: Arc<P>,
    recorder: Arc<Recorder>,
) {
    let mut client_in = Buffered::new(client_read);
    let (upstream_read, mut upstream_out) = match upstream.connect().await {
        Ok(halves) => halves,
        Err(error) => {
            let message = format!("cannot reach the upstream service: {error}");
            let _ = client_out.write_all(&error_response(502, "Bad Gateway", &message)).await;
            return;
        }
    };
    let mut upstream_in = Buffered::new(upstream_read);
    loop {
        let head = match client_in.read_head(true).await {
            Ok(head) => head,
            Err(HttpError::Closed) | Err(HttpError::Io(_)) => return,
            Err(HttpError::HeadTooLarge) => {
                let _ = client_out
                    .write_all(&error_response(431, "Request Header Fields Too Large", "request head too large"))
                    .await;
                return;
            }
            Err(error) => {
                let _ = client_out.write_all(&error_response(400, "Bad Request", &error.to_string())).await;
                return;
            }
        };
        let mut streams = Streams {
            client_in: &mut client_in,
            client_out: &mut client_out,
            upstream_in: &mut upstream_in,
            upstream_out: &mut upstream_out,
        };
        let step = match (policy.create_kind(&head), policy.image_call(&head)) {
            (Some(kind), _) => streams.forward_create(kind, head, policy.as_ref(), &recorder).await,
            (None, Some(call)) => streams.forward_image(head, call, &recorder, &upstream).await,
            (None, None) => streams.forward(head, policy.as_ref()).await,
        };
        match step {
            Ok(Next::KeepAlive) => continue,
            Ok(Next::Close) => return,
            Err(error) => {
                tracing::debug!("proxy: connection ended: {error}");
                return;
            }
        }
    }
}

struct Streams<'a> {
    client_in: &'a mut Buffered<BoxRead>,
    client_out: &'a mut BoxWrite,
    upstream_in: &'a mut Buffered<BoxRead>,
    upstream_out: &'a mut BoxWrite,
}

fn next_after(framing: Framing, request: &Head, response: &Head) -> Next {
    if framing == Framing::UntilClose || request.wants_close() || response.wants_close() {
        Next::Close
    } else {
        Next::KeepAlive
    }
}

impl Streams<'_> {
    /// A create call: the body is read whole and rewritten; the answer is
    /// read whole, its id recorded, then passed back unchanged.
    async fn forward_create<P: Policy>(
        &mut self,
        kind: Kind,
        head: Head,
        policy: &P,
        recorder: &Recorder,
    ) -> Result<Next, HttpError> {
        let framing = match head.request_framing() {
            Ok(framing) => framing,
            Err(error) => {
                self.client_out.write_all(&error_response(400, "Bad Request", &error.to_string())).await?;
                return Ok(Next::Close);
            }
        };
        let body = self.client_in.copy_body(framing, &mut tokio::io::sink(), true).await?.unwrap_or_default();
        // From here until its answer is recorded, a stopping proxy waits for this create.
        let _in_flight = recorder.creates.token();
        // Counts as live from here until its answer, so two creates at once cannot both pass the last place.
        let reservation = match recorder.live.reserve(&recorder.task_id, kind) {
            Ok(reservation) => reservation,
            Err(refusal) => {
                recorder.events.emit(Event::Refused { task: &recorder.task_id, refusal: &refusal });
                self.client_out.write_all(&policy.refusal(&head, &refusal.message())).await?;
                return Ok(Next::Close);
            }
        };
        let rewritten = match policy.rewrite_create_body(kind, &body) {
            Ok(rewritten) => rewritten,
            Err(message) => {
                self.client_out.write_all(&error_response(400, "Bad Request", &message)).await?;
                return Ok(Next::Close);
            }
        };
        self.upstream_out.write_all(&policy.upstream_head(&head, Some(rewritten.len()))).await?;
        self.upstream_out.write_all(&rewritten).await?;
        self.upstream_out.flush().await?;

        let response = self.upstream_in.read_head(false).await?;
        let framing = response.response_framing(&head.method)?;
        let mut raw_body = Vec::new();
        let answer = self.upstream_in.copy_body(framing, &mut raw_body, true).await?.unwrap_or_default();
        if (200..300).contains(&response.status) {
            match policy.created(kind, &head.target, &body, &answer) {
                Some((id, name)) => {
                    if let Some(reservation) = reservation {
                        reservation.commit(&id);
                    }
                    recorder.record(ResourceRef { kind, id, name }).await
                }
                None => tracing::warn!("task {}: a {kind} create answered without an id", recorder.task_id),
            }
        }
        self.client_out.write_all(&response.raw).await?;
        self.client_out.write_all(&raw_body).await?;
        self.client_out.flush().await?;
        Ok(next_after(framing, &head, &response))
    }

    /// A call that makes an image: forwarded as it comes (a build's target
    /// with owner labels), its answer streamed back while read for the
    /// image's id; the image is recorded before the end of the answer
    /// reaches the client.
    async fn forward_image(
        &mut self,
        head: Head,
        mut call: ImageCall,
        recorder: &Recorder,
        upstream: &Upstream,
    ) -> Result<Next, HttpError> {
        let framing = head.request_framing()?;
        let response = self.send_request(head.rewritten(Some(&call.upstream_target), None, None), framing).await?;
        self.client_out.write_all(&response.raw).await?;
        self.client_out.flush().await?;
        let answer_framing = response.response_framing(&head.method)?;
        if !(200..300).contains(&response.status) {
            self.upstream_in.copy_body(answer_framing, &mut *self.client_out, false).await?;
            return Ok(next_after(answer_framing, &head, &response));
        }
        let mut observe = |bytes: &[u8]| call.observe(bytes);
        let end = self.upstream_in.copy_body_observed(answer_framing, &mut *self.client_out, &mut observe).await?;
        if let Some(made) = call.finish() {
            recorder.record_image(made, upstream).await;
        }
        self.client_out.write_all(&end).await?;
        self.client_out.flush().await?;
        Ok(next_after(answer_framing, &head, &response))
    }

    /// Sends a request head and its body while reading the answer's head.
    /// The server may answer before it has read the whole body (a build
    /// that fails early), so sending and receiving race. A client that goes
    /// away mid-body ends the exchange at once, which closes the upstream
    /// side too: an answer would never come from a server that still
    /// expects the rest of the body.
    async fn send_request(&mut self, upstream_head: Vec<u8>, framing: Framing) -> Result<Head, HttpError> {
        self.upstream_out.write_all(&upstream_head).await?;
        self.upstream_out.flush().await?;
        let send = self.client_in.copy_body(framing, &mut *self.upstream_out, false);
        let receive = self.upstream_in.read_head(false);
        tokio::pin!(send, receive);
        tokio::select! {
            sent = &mut send => {
                sent?;
                receive.await
            }
            response = &mut receive => {
                let response = response?;
                send.await?;
                Ok(response)
            }
        }
    }

    /// Any other call: head and body forwarded as they come, the answer
    /// streamed back, a hijack or upgrade spliced.
    async fn forward<P: Policy>(&mut self, head: Head, policy: &P) -> Result<Next, HttpError> {
        let framing = head.request_framing()?;
        let response = self.send_request(policy.upstream_head(&head, None), framing).await?;
        self.client_out.write_all(&response.raw).await?;
        self.client_out.flush().await?;

        let hijacked = response.status == 101
            || (response.status == 200 && !head.is_upgrade() && policy.may_hijack(&head) && is_raw_stream(&response));
        if hijacked {
            self.splice().await;
            return Ok(Next::Close);
        }

        let framing = response.response_framing(&head.method)?;
        // Stream the answer (logs -f, events, long polls) while watching the client:
        // if it goes away, the upstream side is closed too.
        let copy = self.upstream_in.copy_body(framing, &mut *self.client_out, false);
        tokio::pin!(copy);
        loop {
            tokio::select! {
                copied = &mut copy => {
                    copied?;
                    break;
                }
                filled = self.client_in.fill() => match filled {
                    Ok(0) | Err(_) => return Ok(Next::Close),
                    // A pipelined next request: kept in the buffer for the next round.
                    Ok(_) => {}
                },
            }
        }
        Ok(next_after(framing, &head, &response))
    }

    /// Copies raw bytes both ways until both sides are done, starting with
    /// what was already buffered on each side.
    async fn splice(&mut self) {
        let pending_to_client: Vec<u8> = self.upstream_in.buffer.drain(..).collect();
        let pending_to_upstream: Vec<u8> = self.client_in.buffer.drain(..).collect();
        if self.client_out.write_all(&pending_to_client).await.is_err()
            || self.upstream_out.write_all(&pending_to_upstream).await.is_err()
        {
            return;
        }
        let to_upstream = async {
            let _ = tokio::io::copy(&mut self.client_in.inner, &mut *self.upstream_out).await;
            let _ = self.upstream_out.shutdown().await;
        };
        let to_client = async {
            let _ = tokio::io::copy(&mut self.upstream_in.inner, &mut *self.client_out).await;
            let _ = self.client_out.shutdown().await;
        };
        tokio::join!(to_upstream, to_client);
    }
}

fn is_raw_stream(head: &Head) -> bool {
    head.header("content-type").is_some_and(|value| {
        let value = String::from_utf8_lossy(value);
        value.starts_with("application/vnd.docker.raw-stream")
            || value.starts_with("application/vnd.docker.multiplexed-stream")
    })
}
