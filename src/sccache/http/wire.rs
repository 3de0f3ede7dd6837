//! The bodies of sccache 0.19's dist protocol, and their bounded decoding.
//!
//! sccache encodes every body with `bincode::serialize` (bincode 1: fixed-width integers,
//! little endian, trailing bytes allowed) and decodes with `bincode::deserialize_from`,
//! which has no size limit: a length prefix claiming 2^45 bytes makes it allocate that much
//! and abort the process. Here every body is first read into memory up to a cap chosen
//! per route ([`read_capped`]), then decoded with the same encoding and a limit of exactly
//! the bytes read ([`decode`]), so a length prefix larger than the body is an error before
//! anything is allocated for it.
//!
//! Two body types are private to sccache's `dist::http` module; they are copied here field
//! for field (bincode encodes fields in declaration order, without names).

use std::io::{self, Read};
use std::time::{Duration, Instant};

use bincode::Options;
use sccache::dist::{CompileCommand, ServerNonce};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// sccache's `dist::http::common::RunJobHttpRequest`: the bincode header of a run_job body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunJobHttpRequest {
    pub command: CompileCommand,
    pub outputs: Vec<String>,
}

/// sccache's `dist::http::common::HeartbeatServerHttpRequest` (field order as declared
/// there: `jwt_key` first).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatServerHttpRequest {
    pub jwt_key: Vec<u8>,
    pub num_cpus: usize,
    pub server_nonce: ServerNonce,
    pub cert_digest: Vec<u8>,
    pub cert_pem: Vec<u8>,
}

/// Why a body was refused.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the body ends early: {expected} bytes announced, {got} received")]
    Truncated { expected: u64, got: u64 },
    #[error("reading the body")]
    Read(#[source] io::Error),
    #[error("decoding the bincode body")]
    Decode(#[source] bincode::Error),
}

impl BodyError {
    /// The HTTP status of the refusal: 413 for size, 400 for the rest.
    pub fn status(&self) -> u16 {
        match self {
            BodyError::TooLarge { .. } => 413,
            _ => 400,
        }
    }
}

/// sccache's encoding (`bincode::serialize`'s configuration) with a limit of `limit` bytes.
fn options(limit: u64) -> impl Options {
    bincode::options()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_little_endian()
        .with_limit(limit)
}

/// Encodes `value` as sccache does (`bincode::serialize`).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    bincode::serialize(value)
}

/// Decodes what [`encode`] (or sccache) produced; nothing beyond `bytes` is ever allocated
/// for a length prefix.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    options(bytes.len() as u64)
        .deserialize(bytes)
        .map_err(BodyError::Decode)
}

/// Reads all of `from`, at most `limit` bytes: more is [`BodyError::TooLarge`].
pub fn read_capped(from: &mut dyn Read, limit: u64) -> Result<Vec<u8>, BodyError> {
    let mut buf = Vec::new();
    from.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(BodyError::Read)?;
    if buf.len() as u64 > limit {
        return Err(BodyError::TooLarge { limit });
    }
    Ok(buf)
}

/// Reads exactly `len` bytes (`len` already checked against its cap by the caller).
pub fn read_exact_len(from: &mut dyn Read, len: u64) -> Result<Vec<u8>, BodyError> {
    let mut buf = Vec::new();
    from.take(len)
        .read_to_end(&mut buf)
        .map_err(BodyError::Read)?;
    if (buf.len() as u64) < len {
        return Err(BodyError::Truncated {
            expected: len,
            got: buf.len() as u64,
        });
    }
    Ok(buf)
}

/// A reader that fails (rather than ends) once more than `limit` bytes came through: the
/// zlib-inflated inputs stream of run_job, so that no tar parsing ever sees more than the
/// engine's unpack budget plus the tar headers' share of it.
pub struct LimitedReader<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> LimitedReader<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        LimitedReader {
            inner,
            left: limit,
            limit,
        }
    }
}

impl<R> LimitedReader<R> {
    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // One byte more than the limit means the stream really is too long.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(format!(
                    "the inflated inputs exceed {} bytes",
                    self.limit
                ))),
            };
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Counts the time spent in, and the bytes out of, the wrapped reader's `read`: the
/// run_job timing line tells the body's transfer (TLS, socket) from its inflation.
pub struct ReadClock<R> {
    inner: R,
    pub spent: Duration,
    pub bytes: u64,
}

impl<R> ReadClock<R> {
    pub fn new(inner: R) -> Self {
        ReadClock {
            inner,
            spent: Duration::ZERO,
            bytes: 0,
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

impl<R: Read> Read for ReadClock<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let start = Instant::now();
        let res = self.inner.read(buf);
        self.spent += start.elapsed();
        if let Ok(n) = res {
            self.bytes += n as u64;
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sccache::dist::{
        AssignJobResult, HeartbeatServerResult, JobState, SubmitToolchainResult, Toolchain,
        UpdateJobStateResult,
    };

    fn tc() -> Toolchain {
        Toolchain {
            archive_id: "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262".into(),
        }
    }

    fn cmd() -> CompileCommand {
        CompileCommand {
            executable: "/usr/bin/gcc".into(),
            arguments: vec!["-c".into(), "a.c".into(), "-o".into(), "a.o".into()],
            env_vars: vec![("LANG".into(), "C".into())],
            cwd: "/build/proj".into(),
        }
    }

    #[test]
    fn decodes_exactly_what_bincode_serialize_produced() {
        let t = tc();
        let got: Toolchain = decode(&bincode::serialize(&t).unwrap()).unwrap();
        assert_eq!(got, t);

        let r = RunJobHttpRequest {
            command: cmd(),
            outputs: vec!["a.o".into(), "a.d".into()],
        };
        let bytes = bincode::serialize(&r).unwrap();
        assert_eq!(encode(&r).unwrap(), bytes);
        let got: RunJobHttpRequest = decode(&bytes).unwrap();
        assert_eq!(format!("{got:?}"), format!("{r:?}"));
        // Re-encoding gives the same bytes, and sccache's own decoder agrees.
        assert_eq!(bincode::serialize(&got).unwrap(), bytes);
        let theirs: RunJobHttpRequest = bincode::deserialize(&bytes).unwrap();
        assert_eq!(format!("{theirs:?}"), format!("{r:?}"));

        let hb = HeartbeatServerHttpRequest {
            jwt_key: vec![7; 32],
            num_cpus: 12,
            server_nonce: ServerNonce::new(),
            cert_digest: vec![1, 2, 3],
            cert_pem: b"pem".to_vec(),
        };
        let bytes = encode(&hb).unwrap();
        let got: HeartbeatServerHttpRequest = decode(&bytes).unwrap();
        assert_eq!(got.jwt_key, hb.jwt_key);
        assert_eq!(got.num_cpus, 12);
        assert_eq!(got.server_nonce, hb.server_nonce);
        assert_eq!(got.cert_digest, hb.cert_digest);
        assert_eq!(got.cert_pem, hb.cert_pem);
        // The layout: jwt_key's u64 length prefix comes first.
        assert_eq!(&bytes[..8], &32u64.to_le_bytes());

        let s: JobState = decode(&bincode::serialize(&JobState::Started).unwrap()).unwrap();
        assert_eq!(s, JobState::Started);
        let a: AssignJobResult = decode(
            &bincode::serialize(&AssignJobResult {
                state: JobState::Pending,
                need_toolchain: true,
            })
            .unwrap(),
        )
        .unwrap();
        assert!(a.need_toolchain && a.state == JobState::Pending);
        let h: HeartbeatServerResult =
            decode(&bincode::serialize(&HeartbeatServerResult { is_new: true }).unwrap()).unwrap();
        assert!(h.is_new);
        let u: UpdateJobStateResult =
            decode(&bincode::serialize(&UpdateJobStateResult::Fail { msg: "no".into() }).unwrap())
                .unwrap();
        assert!(matches!(u, UpdateJobStateResult::Fail { msg } if msg == "no"));
        let st: SubmitToolchainResult =
            decode(&bincode::serialize(&SubmitToolchainResult::CannotCache).unwrap()).unwrap();
        assert!(matches!(st, SubmitToolchainResult::CannotCache));

        // Trailing bytes are allowed, as bincode::deserialize allows them.
        let mut bytes = bincode::serialize(&t).unwrap();
        bytes.extend_from_slice(b"trailing");
        let got: Toolchain = decode(&bytes).unwrap();
        assert_eq!(got, t);
    }

    #[test]
    fn huge_length_prefixes_are_errors_not_allocations() {
        // A string (Toolchain.archive_id / CompileCommand.executable) claiming 2^45 bytes.
        let mut body = (1u64 << 45).to_le_bytes().to_vec();
        body.extend_from_slice(b"abc");
        assert!(matches!(
            decode::<Toolchain>(&body),
            Err(BodyError::Decode(_))
        ));
        assert!(matches!(
            decode::<RunJobHttpRequest>(&body),
            Err(BodyError::Decode(_))
        ));
        // A vector (arguments) claiming 2^60 elements after a valid executable.
        let mut body = 1u64.to_le_bytes().to_vec();
        body.push(b'x');
        body.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode::<RunJobHttpRequest>(&body).is_err());
    }

    #[test]
    fn random_and_truncated_bodies_are_errors() {
        // A fixed xorshift stream: 64-byte random bodies, many of them.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2000 {
            let body: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode::<RunJobHttpRequest>(&body);
            let _ = decode::<Toolchain>(&body);
        }
        let full = bincode::serialize(&RunJobHttpRequest {
            command: cmd(),
            outputs: vec!["a.o".into()],
        })
        .unwrap();
        for cut in 0..full.len() {
            assert!(
                decode::<RunJobHttpRequest>(&full[..cut]).is_err(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn read_capped_and_limited_reader() {
        assert_eq!(read_capped(&mut &b"12345"[..], 5).unwrap(), b"12345");
        assert!(matches!(
            read_capped(&mut &b"123456"[..], 5),
            Err(BodyError::TooLarge { limit: 5 })
        ));
        assert!(matches!(
            read_exact_len(&mut &b"123"[..], 5),
            Err(BodyError::Truncated {
                expected: 5,
                got: 3
            })
        ));
        let mut out = Vec::new();
        LimitedReader::new(&b"12345"[..], 5)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"12345");
        let mut out = Vec::new();
        assert!(LimitedReader::new(&b"123456"[..], 5)
            .read_to_end(&mut out)
            .is_err());
    }
}
