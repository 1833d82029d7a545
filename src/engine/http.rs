//! The engine's HTTP/1.1, reduced to what the scanner sends: `GET` requests on keep-alive
//! connections to a Unix socket or a plain TCP address, answers returned as bytes.
//!
//! Why not a general client: bollard (used before) opens a new connection for every request
//! (its pool is switched off), which cost both the scanner and the engine a connect, an accept
//! and a goroutine per request (200 targets: 204 connections, ~40 % of the scanner's system
//! time), and it parsed every inspect into typed structs only for the scanner to turn them back
//! into JSON. Here idle connections are kept and reused, and the caller parses the body once.
//!
//! HTTP itself (framing, chunked and close-delimited bodies, keep-alive rules) is hyper's
//! connection-level client; this module adds only what hyper leaves to its caller at that
//! level: connecting, a small pool of idle connections, the retry of a request whose reused
//! connection the engine had closed, and a bound on what is read.

use std::path::PathBuf;
use std::sync::Mutex;

use bytes::Bytes;
use http::header::{ACCEPT, HOST, HeaderValue, USER_AGENT};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

/// The largest answer read from the engine: far above any inspect, list or info answer, but a
/// bound, so a broken engine (or something else on the socket) cannot exhaust memory.
const MAX_BODY: usize = 256 * 1024 * 1024;

/// The largest status line plus headers accepted (hyper's own default is its whole read
/// buffer, ~400 KB; an engine's heads are a few hundred bytes).
const MAX_HEAD: usize = 64 * 1024;

/// Idle connections kept for reuse; more in flight at once are closed after their answer.
const MAX_IDLE: usize = 64;

/// Where to connect.
#[derive(Debug, Clone)]
pub enum Address {
    /// A Unix socket path.
    Unix(PathBuf),
    /// `host:port`, plain TCP.
    Tcp(String),
}

/// The sending half of one connection; its other half runs in a spawned task.
type Sender = http1::SendRequest<Empty<Bytes>>;

/// One answer: the status code, the engine's API version header and the (de-chunked) body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status code.
    pub status: u16,
    /// The `Api-Version` header (Docker and Podman send it on every answer), if any.
    pub api_version: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

/// A client for one engine address, with a pool of idle keep-alive connections.
pub struct Client {
    address: Address,
    /// The `Host` header (engines ignore it on a Unix socket, but HTTP/1.1 requires one).
    host: HeaderValue,
    user_agent: HeaderValue,
    /// The bound on a body: [`MAX_BODY`], lower in tests.
    max_body: usize,
    idle: Mutex<Vec<Sender>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.address)
            .finish()
    }
}

fn invalid(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

fn too_large() -> std::io::Error {
    invalid("the engine's answer is too large")
}

/// hyper's error as an I/O error that says what failed; hyper's `Display` is only the outer
/// layer ("error reading a body from connection"), the cause is in its sources.
fn hyper_error(e: hyper::Error) -> std::io::Error {
    let mut causes = String::new();
    let mut eof = e.is_incomplete_message();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        causes.push_str(": ");
        causes.push_str(&s.to_string());
        // A body cut short is an I/O error deep in the chain, not an "incomplete message".
        eof |= s
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof);
        source = s.source();
    }
    let (kind, text) = if e.is_parse() {
        (
            std::io::ErrorKind::InvalidData,
            format!("not an HTTP/1.1 answer: {e}{causes}"),
        )
    } else if eof {
        (
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "the engine closed the connection before its answer was complete ({e}{causes})"
            ),
        )
    } else {
        (std::io::ErrorKind::Other, format!("{e}{causes}"))
    };
    std::io::Error::new(kind, text)
}

impl Client {
    /// A client for `address`; nothing is connected yet. `user_agent` must be a valid header
    /// value (it is a constant of the caller's).
    pub fn new(address: Address, user_agent: &'static str) -> Client {
        let host = match &address {
            Address::Unix(_) => HeaderValue::from_static("docker"),
            // An address that is not a valid header value cannot be connected to either; the
            // connect then says what is wrong with it.
            Address::Tcp(a) => {
                HeaderValue::from_str(a).unwrap_or_else(|_| HeaderValue::from_static("docker"))
            }
        };
        Client {
            address,
            host,
            user_agent: HeaderValue::from_static(user_agent),
            max_body: MAX_BODY,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A new connection, its HTTP/1.1 half running in a task of its own.
    async fn connect(&self) -> std::io::Result<Sender> {
        let mut builder = http1::Builder::new();
        builder.max_header_size(MAX_HEAD);
        match &self.address {
            Address::Unix(path) => {
                handshake(&builder, tokio::net::UnixStream::connect(path).await?).await
            }
            Address::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr.as_str()).await?;
                // Requests are one small write each: no Nagle delay waiting for an ACK.
                s.set_nodelay(true)?;
                handshake(&builder, s).await
            }
        }
    }

    /// An idle connection that is still open and ready for a request, if there is one.
    async fn reuse(&self) -> Option<Sender> {
        loop {
            let mut sender = self.idle.lock().expect("not poisoned").pop()?;
            // A connection the engine closed while it was idle is usually known closed by now;
            // one whose close is still in flight is caught by the retry in `get`.
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// `GET path` (path and query, e.g. `/v1.41/info`). A reused connection that the engine
    /// closed while it was idle fails before any answer; the request is then sent once more on
    /// a new connection (a GET may be repeated).
    pub async fn get(&self, path: &str) -> std::io::Result<Answer> {
        if let Some(sender) = self.reuse().await {
            match self.exchange(sender, path).await {
                Err(Failure::BeforeAnswer(e)) => {
                    tracing::debug!(error = %e, "reused engine connection failed; retrying on a new one");
                }
                other => return other.map_err(Failure::into_io),
            }
        }
        let sender = self.connect().await?;
        self.exchange(sender, path).await.map_err(Failure::into_io)
    }

    async fn exchange(&self, mut sender: Sender, path: &str) -> Result<Answer, Failure> {
        let request = http::Request::get(path)
            .header(HOST, self.host.clone())
            .header(USER_AGENT, self.user_agent.clone())
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .body(Empty::new())
            .map_err(|e| {
                Failure::Answer(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("cannot send GET {path}: {e}"),
                ))
            })?;
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| Failure::BeforeAnswer(hyper_error(e)))?;
        let status = answer.status().as_u16();
        let api_version = answer
            .headers()
            .get("api-version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_body(answer.into_body(), self.max_body)
            .await
            .map_err(Failure::Answer)?;
        // hyper closes the connection itself when the answer said so (or was an HTTP/1.0 one
        // without keep-alive, or close-delimited); such a sender is closed by now or fails
        // `ready` when next taken.
        if !sender.is_closed() {
            let mut idle = self.idle.lock().expect("not poisoned");
            if idle.len() < MAX_IDLE {
                idle.push(sender);
            }
        }
        Ok(Answer {
            status,
            api_version,
            body,
        })
    }
}

/// How an exchange failed: before any answer arrived (the request may be sent again), or
/// while reading one (it may not: the engine did answer, and the error is the answer's).
enum Failure {
    BeforeAnswer(std::io::Error),
    Answer(std::io::Error),
}

impl Failure {
    fn into_io(self) -> std::io::Error {
        match self {
            Failure::BeforeAnswer(e) | Failure::Answer(e) => e,
        }
    }
}

/// Start HTTP/1.1 on a connected stream: its sending half, the other half driven by a task.
async fn handshake<S>(builder: &http1::Builder, stream: S) -> std::io::Result<Sender>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = builder
        .handshake(TokioIo::new(stream))
        .await
        .map_err(hyper_error)?;
    tokio::spawn(drive(conn));
    Ok(sender)
}

/// Run one connection's HTTP/1.1 state machine until it closes. Its errors also reach the
/// request in flight, which reports them; here they are only traced.
async fn drive<T>(conn: http1::Connection<T, Empty<Bytes>>)
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send,
{
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "engine connection ended");
    }
}

/// The whole body, at most `max` bytes (refused at once when its `Content-Length` is larger).
async fn read_body(mut body: Incoming, max: usize) -> std::io::Result<Vec<u8>> {
    let hint = body.size_hint();
    if hint.lower() > max as u64 {
        return Err(too_large());
    }
    // Sized bodies (most engine answers) are read into one allocation of the right size.
    let mut out = Vec::with_capacity(hint.exact().unwrap_or(0) as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(hyper_error)?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(too_large());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    /// What a scripted engine saw: the heads of the requests, per connection, in order.
    type Seen = Arc<Mutex<Vec<Vec<String>>>>;

    /// A scripted engine on a real Unix socket: the n-th connection accepted answers the
    /// requests it reads with `scripts[n]`'s raw answers, one per request, then closes. A step
    /// `None` reads a request and closes without answering (an engine that closed an idle
    /// connection as the request arrived). Connections beyond the scripts are closed at once.
    fn engine(scripts: Vec<Vec<Option<&'static [u8]>>>) -> (tempfile::TempDir, Client, Seen) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let seen: Seen = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            let mut scripts = scripts.into_iter();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let index = {
                    let mut log = log.lock().unwrap();
                    log.push(Vec::new());
                    log.len() - 1
                };
                let script = scripts.next().unwrap_or_default();
                let log = log.clone();
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    for step in script {
                        let mut head = String::new();
                        loop {
                            let mut line = String::new();
                            if stream.read_line(&mut line).await.unwrap() == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            head.push_str(&line);
                        }
                        log.lock().unwrap()[index].push(head);
                        match step {
                            Some(raw) => stream.get_mut().write_all(raw).await.unwrap(),
                            None => return,
                        }
                    }
                });
            }
        });
        let client = Client::new(Address::Unix(path), "imagetrail/test");
        (dir, client, seen)
    }

    fn connections(seen: &Seen) -> usize {
        seen.lock().unwrap().len()
    }

    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n";
    const SIZED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]";

    #[tokio::test]
    async fn reads_chunked_and_sized_bodies_on_one_kept_connection() {
        let (_dir, client, seen) = engine(vec![vec![Some(CHUNKED), Some(SIZED)]]);
        let a = client.get("/v1.41/info").await.unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"{\"a\":1}"[..]));
        let a = client.get("/v1.41/images/x/json?q=1").await.unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"[]"[..]));
        assert_eq!(
            connections(&seen),
            1,
            "the second GET reuses the connection"
        );
        let heads = seen.lock().unwrap()[0].clone();
        assert!(
            heads[0].starts_with("GET /v1.41/info HTTP/1.1\r\n"),
            "{heads:?}"
        );
        let lower = heads[0].to_ascii_lowercase();
        assert!(lower.contains("host: docker\r\n"), "{heads:?}");
        assert!(
            lower.contains("user-agent: imagetrail/test\r\n"),
            "{heads:?}"
        );
        assert!(
            heads[1].starts_with("GET /v1.41/images/x/json?q=1 HTTP/1.1\r\n"),
            "{heads:?}"
        );
    }

    #[tokio::test]
    async fn an_answer_that_closes_is_followed_by_a_new_connection() {
        let (_dir, client, seen) = engine(vec![
            vec![Some(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            )],
            vec![Some(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")],
            vec![Some(SIZED)],
        ]);
        let a = client.get("/a").await.unwrap();
        assert_eq!((a.status, a.body.as_slice()), (404, &b"{}"[..]));
        let a = client.get("/b").await.unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"until the end"[..]));
        let a = client.get("/c").await.unwrap();
        assert_eq!(a.body, b"[]");
        assert_eq!(connections(&seen), 3);
    }

    #[tokio::test]
    async fn a_reused_connection_the_engine_closed_is_retried_once_on_a_new_one() {
        // The first connection answers one request, then takes the second and closes without
        // answering: the client cannot know before sending.
        let (_dir, client, seen) = engine(vec![vec![Some(SIZED), None], vec![Some(CHUNKED)]]);
        client.get("/a").await.unwrap();
        let a = client.get("/b").await.unwrap();
        assert_eq!(a.body, b"{\"a\":1}");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen[1][0].starts_with("GET /b "), "{seen:?}");
    }

    #[tokio::test]
    async fn a_new_connection_that_fails_is_not_retried() {
        let (_dir, client, seen) = engine(vec![vec![None], vec![Some(SIZED)]]);
        let e = client.get("/a").await.unwrap_err();
        assert!(e.to_string().contains("closed the connection"), "{e}");
        assert_eq!(connections(&seen), 1);
    }

    #[tokio::test]
    async fn refuses_what_is_not_http_and_short_bodies() {
        let (_dir, client, _) = engine(vec![
            vec![Some(b"SSH-2.0-OpenSSH\r\n\r\n")],
            vec![Some(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")],
        ]);
        let e = client.get("/").await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("not an HTTP/1.1 answer"), "{e}");
        // The short body's connection is then closed by the engine: the answer is incomplete.
        let e = client.get("/").await.unwrap_err();
        assert!(e.to_string().contains("closed the connection"), "{e}");
    }

    #[tokio::test]
    async fn bodies_over_the_cap_are_refused() {
        let (_dir, mut client, _) = engine(vec![
            vec![Some(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n123456789")],
            vec![Some(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n4\r\n6789\r\n0\r\n\r\n",
            )],
            vec![Some(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n12345678")],
        ]);
        client.max_body = 8;
        for _ in 0..2 {
            let e = client.get("/").await.unwrap_err();
            assert_eq!(e.to_string(), "the engine's answer is too large");
        }
        assert_eq!(client.get("/").await.unwrap().body, b"12345678");
    }

    #[tokio::test]
    async fn speaks_to_a_tcp_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8];
                s.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            s.write_all(SIZED).await.unwrap();
            String::from_utf8(head).unwrap()
        });
        let client = Client::new(Address::Tcp(addr.clone()), "imagetrail/test");
        assert_eq!(client.get("/version").await.unwrap().body, b"[]");
        let head = server.await.unwrap().to_ascii_lowercase();
        assert!(head.contains(&format!("host: {addr}\r\n")), "{head}");
    }
}
