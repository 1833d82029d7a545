//! The engine's HTTP/1.1, reduced to what the scanner sends: `GET` requests on keep-alive
//! connections to a Unix socket or a plain TCP address, answers returned as bytes.
//!
//! Why not a general client: bollard (used before) opens a new connection for every request
//! (its pool is switched off), which cost both the scanner and the engine a connect, an accept
//! and a goroutine per request (200 targets: 204 connections, ~40 % of the scanner's system
//! time), and it parsed every inspect into typed structs only for the scanner to turn them back
//! into JSON. Here idle connections are kept and reused, and the caller parses the body once.

use std::path::PathBuf;
use std::sync::Mutex;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// The largest answer read from the engine: far above any inspect, list or info answer, but a
/// bound, so a broken engine (or something else on the socket) cannot exhaust memory.
const MAX_BODY: usize = 256 * 1024 * 1024;

/// The longest status or header line accepted.
const MAX_LINE: usize = 64 * 1024;

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

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type Conn = BufReader<Box<dyn Io>>;

/// One answer: the status code and the (de-chunked) body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

/// A client for one engine address, with a pool of idle keep-alive connections.
pub struct Client {
    address: Address,
    /// The `Host` header (engines ignore it on a Unix socket, but HTTP/1.1 requires one).
    host: String,
    user_agent: &'static str,
    idle: Mutex<Vec<Conn>>,
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

impl Client {
    /// A client for `address`; nothing is connected yet.
    pub fn new(address: Address, user_agent: &'static str) -> Client {
        let host = match &address {
            Address::Unix(_) => "docker".to_string(),
            Address::Tcp(a) => a.clone(),
        };
        Client {
            address,
            host,
            user_agent,
            idle: Mutex::new(Vec::new()),
        }
    }

    async fn connect(&self) -> std::io::Result<Conn> {
        let io: Box<dyn Io> = match &self.address {
            Address::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
            Address::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr.as_str()).await?;
                // Requests are one small write each: no Nagle delay waiting for an ACK.
                s.set_nodelay(true)?;
                Box::new(s)
            }
        };
        Ok(BufReader::with_capacity(16 * 1024, io))
    }

    /// `GET path` (path and query, e.g. `/v1.41/info`). A reused connection that the engine
    /// closed while it was idle fails at once; the request is then sent once more on a new
    /// connection (a GET may be repeated).
    pub async fn get(&self, path: &str) -> std::io::Result<Answer> {
        let reused = self.idle.lock().expect("not poisoned").pop();
        if let Some(conn) = reused
            && let Ok(answer) = self.exchange(conn, path).await
        {
            return Ok(answer);
        }
        let conn = self.connect().await?;
        self.exchange(conn, path).await
    }

    async fn exchange(&self, mut conn: Conn, path: &str) -> std::io::Result<Answer> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {}\r\nAccept: application/json\r\n\r\n",
            self.host, self.user_agent
        );
        conn.get_mut().write_all(request.as_bytes()).await?;
        let (answer, keep) = read_answer(&mut conn).await?;
        if keep {
            let mut idle = self.idle.lock().expect("not poisoned");
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
        Ok(answer)
    }
}

/// Read one line (without its CRLF), bounded.
async fn read_line(conn: &mut Conn, line: &mut Vec<u8>) -> std::io::Result<()> {
    line.clear();
    let n = (&mut *conn)
        .take(MAX_LINE as u64)
        .read_until(b'\n', line)
        .await?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the engine closed the connection",
        ));
    }
    if !line.ends_with(b"\n") {
        return Err(invalid("a line of the engine's answer is too long"));
    }
    line.pop();
    if line.ends_with(b"\r") {
        line.pop();
    }
    Ok(())
}

/// Read a status line, the headers and the body; also says whether the connection may be
/// reused.
async fn read_answer(conn: &mut Conn) -> std::io::Result<(Answer, bool)> {
    let mut line = Vec::with_capacity(128);
    read_line(conn, &mut line).await?;
    let status_line = String::from_utf8_lossy(&line).into_owned();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or_default();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| invalid(format!("not an HTTP answer: {status_line:?}")))?;
    let mut keep = version == "HTTP/1.1";
    let mut length: Option<usize> = None;
    let mut chunked = false;
    loop {
        read_line(conn, &mut line).await?;
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
        let value = String::from_utf8_lossy(&line[colon + 1..])
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "content-length" => {
                length = Some(
                    value
                        .parse()
                        .map_err(|_| invalid(format!("bad Content-Length {value:?}")))?,
                )
            }
            "transfer-encoding" => chunked = value.split(',').any(|v| v.trim() == "chunked"),
            "connection" => {
                if value.contains("close") {
                    keep = false;
                } else if value.contains("keep-alive") {
                    keep = true;
                }
            }
            _ => {}
        }
    }
    let mut body = Vec::new();
    if status == 204 || status == 304 || (100..200).contains(&status) {
        // No body.
    } else if chunked {
        loop {
            read_line(conn, &mut line).await?;
            let size = String::from_utf8_lossy(&line);
            let size = size.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| invalid(format!("bad chunk size {size:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    read_line(conn, &mut line).await?;
                    if line.is_empty() {
                        break;
                    }
                }
                break;
            }
            if body.len() + size > MAX_BODY {
                return Err(invalid("the engine's answer is too large"));
            }
            let start = body.len();
            body.resize(start + size, 0);
            conn.read_exact(&mut body[start..]).await?;
            read_line(conn, &mut line).await?;
        }
    } else if let Some(len) = length {
        if len > MAX_BODY {
            return Err(invalid("the engine's answer is too large"));
        }
        body.resize(len, 0);
        conn.read_exact(&mut body).await?;
    } else {
        // Delimited by the end of the connection.
        keep = false;
        (&mut *conn)
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut body)
            .await?;
        if body.len() > MAX_BODY {
            return Err(invalid("the engine's answer is too large"));
        }
    }
    Ok((Answer { status, body }, keep))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer_of(raw: &'static [u8]) -> std::io::Result<(Answer, bool)> {
        let io: Box<dyn Io> = Box::new(tokio_test_io(raw));
        let mut conn = BufReader::new(io);
        read_answer(&mut conn).await
    }

    /// A duplex stream whose far end has written `raw` and closed.
    fn tokio_test_io(raw: &'static [u8]) -> tokio::io::DuplexStream {
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            b.write_all(raw).await.unwrap();
        });
        a
    }

    #[tokio::test]
    async fn reads_chunked_and_sized_bodies() {
        let (a, keep) = answer_of(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(
            (a.status, a.body.as_slice(), keep),
            (200, &b"{\"a\":1}"[..], true)
        );
        let (a, keep) = answer_of(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        )
        .await
        .unwrap();
        assert_eq!(
            (a.status, a.body.as_slice(), keep),
            (404, &b"{}"[..], false)
        );
        let (a, keep) = answer_of(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
            .await
            .unwrap();
        assert_eq!((a.body.as_slice(), keep), (&b"until the end"[..], false));
    }

    #[tokio::test]
    async fn refuses_what_is_not_http() {
        assert!(answer_of(b"SSH-2.0-OpenSSH\r\n\r\n").await.is_err());
        assert!(
            answer_of(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
                .await
                .is_err()
        );
    }
}
