//! `jailbuilder serve`'s Prometheus endpoint (`metrics_addr`): plain HTTP, `GET /metrics`
//! only, the text of [`crate::metrics::render`] over the engine's and the
//! [`JailServer`]'s statistics (the metric table is in [`crate::metrics`]).
//!
//! One thread serves one connection at a time, with the build server's bounded request
//! reader ([`super::http::conn::read_head`], head at most
//! [`super::http::conn::MAX_HEAD_BYTES`]) and read/write timeouts, so a slow or hostile
//! client can hold up scrapes for at most [`IO_TIMEOUT`] per connection and never the
//! build path: a scrape takes the engine's snapshot ([`crate::engine::Engine::stats`]:
//! atomics and the pool's bookkeeping lock, briefly) and the server's atomic counters, and
//! walks the toolchain cache directory (two levels, one entry per archive) without its
//! lock. Any other path is 404, any other method 405, a malformed or oversized head 400.

use std::fs;
use std::io::{self, BufReader, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::http::conn::{read_head, HeadError, Response};
use super::JailServer;
use crate::backend::Backend;
use crate::metrics::{render, ServerStats, Snapshot, CONTENT_TYPE};

/// How long one connection may take to send its head, and to take the response.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// After an error response, this much of what the client still sends is read away so that
/// closing the socket does not reset the connection under the response.
const DRAIN_BYTES: u64 = 64 << 10;

/// Bytes and number of the regular files in `tc_dir` and its subdirectories (sccache's
/// `TcCache` keeps `<tc>/<id[0]>/<id[1]>/<id>`), at most three levels deep. Missing is
/// empty.
pub fn toolchain_cache_usage(tc_dir: &Path) -> (u64, u64) {
    fn walk(dir: &Path, depth: u32, acc: &mut (u64, u64)) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_file() {
                acc.0 += meta.len();
                acc.1 += 1;
            } else if meta.is_dir() && depth > 0 {
                walk(&e.path(), depth - 1, acc);
            }
        }
    }
    let mut acc = (0, 0);
    walk(tc_dir, 2, &mut acc);
    acc
}

/// The snapshot one scrape renders.
pub fn snapshot<B: Backend>(server: &JailServer<B>, tc_dir: &Path) -> Snapshot {
    let (bytes, archives) = toolchain_cache_usage(tc_dir);
    Snapshot {
        engine: server.builder().engine().stats(),
        server: Some(ServerStats {
            assignments_refused: server.assignments_refused(),
            uploads_in_flight: server.uploads_in_flight(),
            uploads_staged_bytes: server.staged_upload_bytes(),
            toolchain_cache_bytes: bytes,
            toolchain_cache_archives: archives,
        }),
    }
}

fn text(status: u16, body: &str) -> Response {
    Response {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.as_bytes().to_vec(),
        headers: Vec::new(),
    }
}

/// Answers one connection.
fn serve_one(stream: TcpStream, render: &dyn Fn() -> String) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut reader = BufReader::new(&stream);
    let response = match read_head(&mut reader) {
        Ok(head) if head.path != "/metrics" => text(404, "not found: only /metrics is served\n"),
        Ok(head) if head.method != "GET" => {
            let mut r = text(405, "only GET is allowed\n");
            r.headers.push(("Allow", "GET".into()));
            r
        }
        Ok(_) => Response {
            status: 200,
            content_type: CONTENT_TYPE,
            body: render().into_bytes(),
            headers: Vec::new(),
        },
        Err(HeadError::Closed) => return,
        Err(e @ (HeadError::TooLarge | HeadError::Malformed(_))) => text(400, &format!("{e}\n")),
        Err(e @ HeadError::Io(_)) => {
            log::debug!("metrics: {e}");
            return;
        }
    };
    let failed = response.status != 200;
    let mut writer = &stream;
    if let Err(e) = response.write_to(&mut writer) {
        log::debug!("metrics: writing the response: {e}");
        return;
    }
    if failed {
        let _ = stream.shutdown(Shutdown::Write);
        let _ = io::copy(&mut reader.take(DRAIN_BYTES), &mut io::sink());
    }
}

/// Serves `render`'s text on `listener` until the process ends, on a thread of its own.
pub fn spawn_endpoint(
    listener: TcpListener,
    render: impl Fn() -> String + Send + 'static,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("jb-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => serve_one(stream, &render),
                    Err(e) => {
                        // EMFILE and the like: do not spin.
                        log::warn!("metrics: accepting a connection: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
}

/// Binds `addr` and serves the metrics of `server` (and its engine) there; returns the
/// address bound (the port chosen, for port 0). `tc_dir` is the toolchain cache's
/// directory (`<cache_dir>/tc`).
pub fn start<B: Backend>(
    addr: SocketAddr,
    server: JailServer<B>,
    tc_dir: PathBuf,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    spawn_endpoint(listener, move || render(&snapshot(&server, &tc_dir)))?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn request(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        // The server may answer (and stop reading) before an oversized head is all sent.
        let _ = s.write_all(raw);
        let _ = s.shutdown(Shutdown::Write);
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn only_get_metrics_is_served_and_bad_heads_do_not_stop_the_endpoint() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        spawn_endpoint(listener, || "jailbuilder_healthy 1\n".to_string()).unwrap();

        let ok = request(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
            "{ok}"
        );
        assert!(ok.ends_with("\r\n\r\njailbuilder_healthy 1\n"), "{ok}");

        let r = request(addr, b"GET /other HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let r = request(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 64 << 10));
        huge.extend_from_slice(b"\r\n\r\n");
        let r = request(addr, &huge);
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
        assert!(r.contains("larger than"), "{r}");
        let r = request(addr, b"garbage\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
        // A client that connects and says nothing.
        drop(TcpStream::connect(addr).unwrap());

        let again = request(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
        assert_eq!(again, ok);
    }

    #[test]
    fn toolchain_cache_usage_counts_archives_three_levels_deep() {
        let tmp = tempfile::tempdir().unwrap();
        let tc = tmp.path().join("tc");
        assert_eq!(toolchain_cache_usage(&tc), (0, 0));
        fs::create_dir_all(tc.join("a/b")).unwrap();
        fs::create_dir_all(tc.join("b/c/deeper")).unwrap();
        fs::write(tc.join("a/b/abc"), [0u8; 100]).unwrap();
        fs::write(tc.join("b/c/bcd"), [0u8; 20]).unwrap();
        fs::write(tc.join("b/c/deeper/not-counted"), [0u8; 7]).unwrap();
        assert_eq!(toolchain_cache_usage(&tc), (120, 2));
    }
}
