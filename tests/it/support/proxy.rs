//! A recording Unix-socket proxy between the binary and the real engine: every byte the
//! client sends is kept, so a test can list the HTTP requests the scanner made.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The proxy; it stops accepting when the test process ends.
pub struct RecordingProxy {
    /// The socket to point the binary at.
    pub socket: PathBuf,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// The real engine's socket path (DOCKER_HOST when it is unix://, else /var/run/docker.sock).
pub fn engine_socket() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => PathBuf::from(&h["unix://".len()..]),
        _ => PathBuf::from("/var/run/docker.sock"),
    }
}

impl RecordingProxy {
    /// Listen on `dir/engine-proxy.sock`, forwarding to `upstream`.
    pub fn start(dir: &Path, upstream: PathBuf) -> RecordingProxy {
        let socket = dir.join("engine-proxy.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let sent: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let record = sent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { break };
                let Ok(mut server) = UnixStream::connect(&upstream) else {
                    break;
                };
                let index = {
                    let mut r = record.lock().unwrap();
                    r.push(vec![]);
                    r.len() - 1
                };
                let mut client_w = client.try_clone().unwrap();
                let mut server_r = server.try_clone().unwrap();
                // engine → client
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server_r, &mut client_w);
                    let _ = client_w.shutdown(std::net::Shutdown::Write);
                });
                // client → engine, recorded
                let record = record.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    loop {
                        match client.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                record.lock().unwrap()[index].extend_from_slice(&buf[..n]);
                                if server.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = server.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        RecordingProxy { socket, sent }
    }

    /// How many connections the client opened.
    pub fn connections(&self) -> usize {
        self.sent.lock().unwrap().len()
    }

    /// The request heads (request line + headers) every connection sent, in order. The
    /// scanner's requests carry no body, so heads are separated by blank lines.
    pub fn requests(&self) -> Vec<String> {
        let sent = self.sent.lock().unwrap();
        let mut heads = vec![];
        for conn in sent.iter() {
            let text = String::from_utf8_lossy(conn);
            for head in text.split("\r\n\r\n") {
                if !head.trim().is_empty() {
                    heads.push(head.to_string());
                }
            }
        }
        heads
    }
}
