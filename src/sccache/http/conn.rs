//! A minimal HTTP/1.1 server side, one request per connection: what sccache's dist
//! clients and scheduler send (POST with a `Content-Length` or a chunked body, bearer
//! tokens) and nothing else.
//!
//! Not rouille/tiny_http (which sccache uses): tiny_http 0.12 drains an unread
//! `Content-Length` body on drop with `vec![0; remaining]` (src/util/equal_reader.rs), so
//! one request announcing 2^45 bytes aborts the process before any handler can refuse it.
//! Here the head is bounded ([`MAX_HEAD_BYTES`]), the announced length is only a number
//! the handler checks against its cap, and unread bodies are drained at most
//! [`DRAIN_BYTES`] before the connection closes.

use std::io::{self, BufRead, Read, Write};

/// Request line plus headers.
pub const MAX_HEAD_BYTES: usize = 16 << 10;
/// After the response is decided, this much of an unread body is read away so that closing
/// the socket does not reset the connection under the response.
pub const DRAIN_BYTES: u64 = 1 << 20;
/// A response body up to this size is written together with the head.
const ONE_WRITE_BYTES: usize = 64 << 10;
/// A chunk-size line or a trailer line.
const MAX_LINE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("reading the request")]
    Io(#[from] io::Error),
    #[error("the connection closed before a request")]
    Closed,
    #[error("the request head is larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

pub struct Head {
    pub method: String,
    pub path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The announced body length; None when chunked or absent.
    pub fn content_length(&self) -> Option<u64> {
        if self.is_chunked() {
            return None;
        }
        self.header("Content-Length")
            .and_then(|v| v.trim().parse().ok())
    }

    fn is_chunked(&self) -> bool {
        self.header("Transfer-Encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    /// `Authorization: Bearer <token>`, as sccache's `bearer_http_auth` reads it.
    pub fn bearer(&self) -> Option<&str> {
        let mut split = self.header("Authorization")?.splitn(2, ' ');
        if split.next()? != "Bearer" {
            return None;
        }
        split.next()
    }

    /// Whether the reply should be JSON: the first of the two types the `Accept` header
    /// names (rouille's `accept!` with octet-stream first: bincode unless JSON is asked for
    /// and octet-stream is not).
    pub fn wants_json(&self) -> bool {
        let Some(accept) = self.header("Accept") else {
            return false;
        };
        let has = |t: &str| {
            accept
                .split(',')
                .any(|p| p.split(';').next().unwrap_or("").trim() == t)
        };
        has("application/json") && !has("application/octet-stream") && !has("*/*")
    }
}

/// Reads one line ending in "\n" of at most `max` bytes (the terminator stripped).
fn read_line(r: &mut dyn BufRead, max: usize) -> Result<Option<String>, HeadError> {
    let mut line = Vec::new();
    let n = r.take(max as u64 + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with(b"\n") {
        return Err(if line.len() > max {
            HeadError::TooLarge
        } else {
            HeadError::Malformed("truncated line")
        });
    }
    line.pop();
    if line.ends_with(b"\r") {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| HeadError::Malformed("not UTF-8"))
}

/// Reads the request line and headers.
pub fn read_head(r: &mut dyn BufRead) -> Result<Head, HeadError> {
    let mut left = MAX_HEAD_BYTES;
    let mut next = |r: &mut dyn BufRead| -> Result<Option<String>, HeadError> {
        let line = read_line(r, left)?;
        if let Some(l) = &line {
            left = left.checked_sub(l.len() + 2).ok_or(HeadError::TooLarge)?;
        }
        Ok(line)
    };
    let first = next(r)?.ok_or(HeadError::Closed)?;
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed("request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HeadError::Malformed("not HTTP/1.x"));
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let line = next(r)?.ok_or(HeadError::Malformed("headers end early"))?;
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or(HeadError::Malformed("header line"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(Head {
        method: method.to_string(),
        path,
        headers,
    })
}

enum Framing {
    Length(u64),
    /// Bytes left in the current chunk; `done` after the last chunk and trailers.
    Chunked {
        left: u64,
        done: bool,
    },
}

/// The body of one request: `Content-Length` bytes, or chunked, or empty.
pub struct Body<'a> {
    conn: &'a mut dyn BufRead,
    framing: Framing,
}

impl<'a> Body<'a> {
    pub fn new(conn: &'a mut dyn BufRead, head: &Head) -> Body<'a> {
        let framing = if head.is_chunked() {
            Framing::Chunked {
                left: 0,
                done: false,
            }
        } else {
            Framing::Length(head.content_length().unwrap_or(0))
        };
        Body { conn, framing }
    }

    /// Reads away up to `limit` more bytes; true if the body ended.
    pub fn drain(&mut self, limit: u64) -> bool {
        let mut sink = io::sink();
        match io::copy(&mut self.take(limit), &mut sink) {
            Ok(n) if n < limit => true,
            Ok(_) => {
                let mut probe = [0u8; 1];
                matches!(self.read(&mut probe), Ok(0))
            }
            Err(_) => false,
        }
    }

    fn chunk_size(&mut self) -> io::Result<u64> {
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
        let line = read_line(self.conn, MAX_LINE)
            .map_err(|e| bad(&e.to_string()))?
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let size = line.split(';').next().unwrap_or("").trim();
        u64::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))
    }
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match self.framing {
            Framing::Length(0) => Ok(0),
            Framing::Length(left) => {
                let max = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = self.conn.read(&mut buf[..max])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.framing = Framing::Length(left - n as u64);
                Ok(n)
            }
            Framing::Chunked { done: true, .. } => Ok(0),
            Framing::Chunked { left: 0, .. } => {
                let size = self.chunk_size()?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    loop {
                        let line = read_line(self.conn, MAX_LINE)
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
                            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
                        if line.is_empty() {
                            break;
                        }
                    }
                    self.framing = Framing::Chunked {
                        left: 0,
                        done: true,
                    };
                    return Ok(0);
                }
                self.framing = Framing::Chunked {
                    left: size,
                    done: false,
                };
                self.read(buf)
            }
            Framing::Chunked { left, .. } => {
                let max = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = self.conn.read(&mut buf[..max])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let left = left - n as u64;
                if left == 0 {
                    let mut crlf = [0u8; 2];
                    self.conn.read_exact(&mut crlf)?;
                    if &crlf != b"\r\n" {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "chunk not followed by CRLF",
                        ));
                    }
                }
                self.framing = Framing::Chunked { left, done: false };
                Ok(n)
            }
        }
    }
}

/// A response: status, content type, body. Always `Connection: close`.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Extra headers (e.g. `WWW-Authenticate`).
    pub headers: Vec<(&'static str, String)>,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

impl Response {
    pub fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        // A small response goes out as one write (over TLS: one record, one segment): the
        // client reads nothing until it has all of it.
        if self.body.len() <= ONE_WRITE_BYTES {
            let mut all = head.into_bytes();
            all.extend_from_slice(&self.body);
            w.write_all(&all)?;
        } else {
            w.write_all(head.as_bytes())?;
            w.write_all(&self.body)?;
        }
        w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    fn parse(raw: &[u8]) -> (Head, Vec<u8>) {
        let mut r = BufReader::new(raw);
        let head = read_head(&mut r).unwrap();
        let mut body = Vec::new();
        Body::new(&mut r, &head).read_to_end(&mut body).unwrap();
        (head, body)
    }

    #[test]
    fn content_length_and_chunked_bodies() {
        let (h, b) = parse(
            b"POST /a/b?q HTTP/1.1\r\nContent-Length: 5\r\nAuthorization: Bearer tok\r\n\r\nhelloXX",
        );
        assert_eq!((h.method.as_str(), h.path.as_str()), ("POST", "/a/b"));
        assert_eq!(h.bearer(), Some("tok"));
        assert_eq!(b, b"hello");
        let (h, b) = parse(
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: v\r\n\r\n",
        );
        assert_eq!(h.content_length(), None);
        assert_eq!(b, b"abcde");
    }

    #[test]
    fn hostile_heads_and_bodies_are_errors() {
        let mut huge = b"POST / HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES));
        huge.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(
            read_head(&mut BufReader::new(&huge[..])),
            Err(HeadError::TooLarge)
        ));
        // An announced length is only a number: reading stops at the real end.
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 35184372088832\r\n\r\nabc";
        let mut r = BufReader::new(&raw[..]);
        let head = read_head(&mut r).unwrap();
        assert_eq!(head.content_length(), Some(1 << 45));
        let mut body = Body::new(&mut r, &head);
        let mut out = Vec::new();
        assert!(body.read_to_end(&mut out).is_err());
        assert!(!body.drain(DRAIN_BYTES));
        // A chunk size beyond u64, a missing CRLF.
        for raw in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n"[..],
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n"[..],
        ] {
            let mut r = BufReader::new(raw);
            let head = read_head(&mut r).unwrap();
            let mut out = Vec::new();
            assert!(Body::new(&mut r, &head).read_to_end(&mut out).is_err());
        }
    }

    #[test]
    fn accept_header() {
        let h = |a: &str| Head {
            method: "POST".into(),
            path: "/".into(),
            headers: vec![("Accept".into(), a.into())],
        };
        assert!(h("application/json").wants_json());
        assert!(!h("application/octet-stream, application/json").wants_json());
        assert!(!h("*/*").wants_json());
    }
}
