//! One build end to end: image, container, inputs, directories, exec, outputs, recycle.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{BuildError, Engine};
use crate::backend::{Backend, BuildUser, ExecOutcome, ToolchainId};
use crate::exec::{CancelToken, CommandSpec, PreparedCommand};
use crate::untrusted::{self, BeneathError, RootDir};

/// Where a toolchain archive (gzip'd tar) comes from, opened only if the image must be
/// built.
pub trait ToolchainSource {
    fn open(&self) -> io::Result<Box<dyn Read + '_>>;
}

impl ToolchainSource for PathBuf {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(io::BufReader::new(std::fs::File::open(self)?)))
    }
}

impl ToolchainSource for &Path {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(io::BufReader::new(std::fs::File::open(self)?)))
    }
}

impl ToolchainSource for Vec<u8> {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(self.as_slice()))
    }
}

impl ToolchainSource for &[u8] {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(*self))
    }
}

/// One compile, as sccache-dist sends it.
pub struct BuildRequest<'a> {
    pub toolchain: ToolchainId,
    pub toolchain_archive: &'a dyn ToolchainSource,
    /// A plain tar laid out from the sandbox root (sccache's inputs, zlib already removed).
    pub inputs: &'a mut dyn Read,
    pub command: CommandSpec,
    /// Output paths, relative to `command.cwd` or absolute inside the sandbox.
    pub outputs: Vec<String>,
}

/// Wall-clock time of each phase of a build.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhaseTimings {
    /// Finding or building the toolchain image.
    pub image: Duration,
    /// Taking a container from the pool (or creating one).
    pub container: Duration,
    /// Unpacking inputs and creating the working and output directories.
    pub unpack: Duration,
    /// The compile itself, including sandbox entry.
    pub exec: Duration,
    /// Reading the outputs back.
    pub outputs: Duration,
    pub total: Duration,
}

/// How the engine turns one output file into what the build returns: the file is streamed
/// through `encode` (in [`OUTPUT_CHUNK_BYTES`] reads), so an encoder that compresses holds
/// only its result, never the whole file. The engine's own is [`RawOutput`]; sccache's glue
/// passes one producing sccache's `OutputData`.
pub trait OutputEncoder {
    type Encoded;
    /// Encodes the output `file`, `size` bytes when it was opened. The reader fails (and
    /// the engine reports the limit, not the encoder's error) if the file grows past the
    /// build's output limits while it is read.
    fn encode(&self, file: &mut dyn Read, size: u64) -> io::Result<Self::Encoded>;
}

/// The file's bytes as they are.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawOutput;

impl OutputEncoder for RawOutput {
    type Encoded = Vec<u8>;

    fn encode(&self, file: &mut dyn Read, size: u64) -> io::Result<Vec<u8>> {
        // `size` is bounded by the output limits checked before reading.
        let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.read_to_end(&mut buf)?;
        Ok(buf)
    }
}

/// Bytes read from an output file per read(2).
pub const OUTPUT_CHUNK_BYTES: usize = 64 << 10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output<D = Vec<u8>> {
    /// As the request named it.
    pub path: String,
    /// The file's content as the build's [`OutputEncoder`] encoded it (the bytes
    /// themselves with [`RawOutput`]).
    pub data: D,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildOutcome<D = Vec<u8>> {
    pub exec: ExecOutcome,
    /// The requested outputs that exist, in request order. A compile that failed usually
    /// produces none; a missing output is not an error.
    pub outputs: Vec<Output<D>>,
    pub timings: PhaseTimings,
}

/// `output` as a path beneath the sandbox root: absolute as given, else relative to cwd.
fn output_beneath(cwd: &str, output: &str) -> Result<String, BuildError> {
    let bad = |reason: &str| BuildError::OutputPath {
        path: output.to_string(),
        reason: reason.to_string(),
    };
    if output.is_empty() {
        return Err(bad("empty"));
    }
    let full = if output.starts_with('/') {
        output.to_string()
    } else {
        format!("{}/{output}", cwd.trim_end_matches('/'))
    };
    untrusted::check_output_path(&full).map_err(|e| bad(&e.to_string()))?;
    Ok(full)
}

/// The sandbox path `full` names, without `.`, empty components, a trailing slash or `..`
/// (applied lexically, never above `/`), so that two spellings of one output compare equal
/// (`a.o`, `/work/./a.o` and `sub/../a.o` in `/work`). Only for finding duplicates: the
/// output is read by the path as given, resolved as the sandbox resolves it.
fn normalized(full: &str) -> String {
    let mut comps: Vec<&str> = Vec::new();
    for c in full.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                comps.pop();
            }
            c => comps.push(c),
        }
    }
    comps
        .iter()
        .fold(String::with_capacity(full.len()), |mut s, c| {
            s.push('/');
            s.push_str(c);
            s
        })
}

/// Checks the requested outputs before any sandbox is touched: each path (see
/// [`output_beneath`]), their number, and that no two name the same path. Returns
/// (as requested, beneath the root) pairs.
fn check_outputs(
    cwd: &str,
    outputs: &[String],
    max_outputs: usize,
) -> Result<Vec<(String, String)>, BuildError> {
    if outputs.len() > max_outputs {
        return Err(BuildError::TooManyOutputs {
            count: outputs.len(),
            limit: max_outputs,
        });
    }
    let mut seen = std::collections::HashMap::with_capacity(outputs.len());
    let mut checked = Vec::with_capacity(outputs.len());
    for o in outputs {
        let full = output_beneath(cwd, o)?;
        if let Some(first) = seen.insert(normalized(&full), o.as_str()) {
            return Err(BuildError::DuplicateOutput {
                path: o.clone(),
                first: first.to_string(),
            });
        }
        checked.push((o.clone(), full));
    }
    Ok(checked)
}

/// An output file as the encoder reads it, at most [`OUTPUT_CHUNK_BYTES`] per read: fails
/// once more than `limit` bytes came out (the file grew after it was opened), remembering
/// why, so the engine can tell its own limits and read errors from the encoder's failures.
struct Metered {
    file: std::fs::File,
    limit: u64,
    read: u64,
    over_limit: bool,
    /// The file's own read error; the encoder sees one of the same kind.
    read_error: Option<io::Error>,
}

impl Read for Metered {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte past the limit is enough to know it was passed.
        let room = (self.limit - self.read.min(self.limit)).saturating_add(1);
        let want = buf
            .len()
            .min(OUTPUT_CHUNK_BYTES)
            .min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = match self.file.read(&mut buf[..want]) {
            Ok(n) => n,
            // Retried by the caller (read_to_end, io::copy): not a failure.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                let kind = e.kind();
                self.read_error = Some(e);
                return Err(io::Error::new(kind, "reading the output failed"));
            }
        };
        self.read += n as u64;
        if self.read > self.limit {
            self.over_limit = true;
            return Err(io::Error::other(
                "the output grew past its limit while read",
            ));
        }
        Ok(n)
    }
}

/// Whether the output names `/dev/null` (a probe's `-o /dev/null`): what a compile writes
/// there is gone, so the output is empty, answered without opening the sandbox's node.
/// Stock sccache-dist returns it empty too (it reads its own null device).
fn is_dev_null(full: &str) -> bool {
    normalized(full) == "/dev/null"
}

fn parent_of(path: &str) -> Option<&str> {
    let p = path.trim_end_matches('/');
    let i = p.rfind('/')?;
    Some(&p[..i]).filter(|s| !s.is_empty())
}

/// Hands the container back to the recycler however the build ends (error, panic).
struct Lent<'a, B: Backend> {
    engine: &'a Engine<B>,
    id: &'a ToolchainId,
    container: Option<super::pool::Held<B::Container>>,
}

impl<B: Backend> Drop for Lent<'_, B> {
    fn drop(&mut self) {
        if let Some(c) = self.container.take() {
            self.engine.pool.release(self.id, c);
        }
    }
}

/// Releases the build's hold on the image however the build ends.
struct ImageUse<'a, B: Backend>(&'a Engine<B>, &'a ToolchainId);

impl<B: Backend> Drop for ImageUse<'_, B> {
    fn drop(&mut self) {
        self.0.pool.done_with_image(self.1);
    }
}

impl<B: Backend> Engine<B> {
    /// Runs one build. Request errors come back as a [`BuildError`] for that job; nothing
    /// in the request can panic the engine.
    pub fn build(&self, req: BuildRequest<'_>) -> Result<BuildOutcome, BuildError> {
        self.build_encoded(req, &RawOutput, None)
    }

    /// [`Engine::build`] with outputs streamed through `encoder` (see [`OutputEncoder`]),
    /// cancellable through `cancel` if given (see [`Engine::build_with_cancel`]).
    pub fn build_encoded<E: OutputEncoder>(
        &self,
        req: BuildRequest<'_>,
        encoder: &E,
        cancel: Option<&Arc<CancelToken>>,
    ) -> Result<BuildOutcome<E::Encoded>, BuildError> {
        let own;
        let cancel = match cancel {
            Some(c) => c,
            None => {
                own = Arc::new(CancelToken::new().map_err(|e| BuildError::Backend {
                    step: "creating the build's cancel pipe",
                    backend: self.pool.backend.kind(),
                    source: Box::new(e),
                })?);
                &own
            }
        };
        let id = self.pool.started(cancel);
        let result = self.build_inner(req, encoder, Some(cancel));
        self.pool.finished(id);
        self.pool.record_build(result.is_ok());
        self.pool.health.builds.record(&result);
        result
    }

    /// [`Engine::build`] that another thread can stop with `cancel.cancel()` (client
    /// disconnect, scheduler cancel). Cancellation is checked between phases and, while the
    /// command runs, wakes its supervisor at once: the sandbox's processes are killed and
    /// the build returns [`BuildError::Cancelled`] promptly; the container is reset by the
    /// recycler as after any build. (A build waiting for a container at the pool bound, or
    /// unpacking a toolchain image, notices at the end of that phase.) [`Engine::shutdown`]
    /// cancels the builds still running when its grace period ends.
    pub fn build_with_cancel(
        &self,
        req: BuildRequest<'_>,
        cancel: &Arc<CancelToken>,
    ) -> Result<BuildOutcome, BuildError> {
        self.build_encoded(req, &RawOutput, Some(cancel))
    }

    fn build_inner<E: OutputEncoder>(
        &self,
        req: BuildRequest<'_>,
        encoder: &E,
        cancel: Option<&CancelToken>,
    ) -> Result<BuildOutcome<E::Encoded>, BuildError> {
        let check = || match cancel {
            Some(c) if c.is_cancelled() => Err(BuildError::Cancelled),
            _ => Ok(()),
        };
        let start = Instant::now();
        let mut t = PhaseTimings::default();
        let pool = &self.pool;
        let cfg = &pool.config;
        let backend = &pool.backend;

        // Everything about the request is checked before any sandbox is touched.
        let command = PreparedCommand::new(req.command)?;
        let cwd = command.spec().cwd.clone();
        let outputs = check_outputs(&cwd, &req.outputs, cfg.max_outputs)?;

        check()?;
        let mark = Instant::now();
        let image = pool.image(&req.toolchain, req.toolchain_archive)?;
        let _image_use = ImageUse(self, &req.toolchain);
        t.image = mark.elapsed();

        check()?;
        let mark = Instant::now();
        let container = pool.acquire(&req.toolchain, &image)?;
        drop(image);
        let lent = Lent {
            engine: self,
            id: &req.toolchain,
            container: Some(container),
        };
        let held = lent.container.as_ref().expect("set above");
        let container = &held.container;
        // The container slot's own identity: no other live container's builds share it.
        let user = cfg
            .build_user(held.slot)
            .ok_or_else(|| BuildError::InvalidConfig {
                what: "build_user_base",
                reason: format!("container slot {} has no build identity", held.slot),
            })?;
        t.container = mark.elapsed();

        let mark = Instant::now();
        let root_path = backend.root(container);
        let root = RootDir::open(root_path).map_err(|e| BuildError::Backend {
            step: "opening the container root",
            backend: backend.kind(),
            source: Box::new(e),
        })?;
        // Inputs belong to the build user, whatever owner the archive names: a client's 0600
        // source or 0640 .rmeta must be readable by the compile.
        untrusted::unpack_tar(req.inputs, &root, &cfg.inputs_limits, Some(user))
            .map_err(BuildError::Inputs)?;
        let owner = Some(user);
        let dir_err = |path: &str, source: BeneathError| BuildError::Directory {
            path: path.to_string(),
            source,
        };
        untrusted::make_dirs_beneath(&root, &cwd, owner).map_err(|e| dir_err(&cwd, e))?;
        for (_, full) in &outputs {
            if is_dev_null(full) {
                continue;
            }
            if let Some(parent) = parent_of(full) {
                untrusted::make_dirs_beneath(&root, parent, owner)
                    .map_err(|e| dir_err(parent, e))?;
            }
        }
        t.unpack = mark.elapsed();

        check()?;
        let mark = Instant::now();
        let exec = backend
            .exec(container, &command, user, &cfg.limits, cancel)
            .map_err(|e| {
                if cancel.is_some_and(CancelToken::is_cancelled) {
                    BuildError::Cancelled
                } else if backend.is_job_error(&e) {
                    BuildError::Start(Box::new(e))
                } else {
                    pool.record_failure();
                    BuildError::Backend {
                        step: "running the command",
                        backend: backend.kind(),
                        source: Box::new(e),
                    }
                }
            })?;
        t.exec = mark.elapsed();

        let mark = Instant::now();
        let read = read_outputs(&root, outputs, encoder, cfg, user)?;
        t.outputs = mark.elapsed();
        drop(root);
        drop(lent);
        t.total = start.elapsed();
        Ok(BuildOutcome {
            exec,
            outputs: read,
            timings: t,
        })
    }
}

/// Reads the outputs that exist, each streamed through `encoder`, within the per-file
/// (`max_output_bytes`) and total (`max_outputs_total_bytes`) limits: a file's size is
/// checked before it is read, and the reader stops at the limit if it grows meanwhile. With
/// an unprivileged build user, a file that user could not have read is refused
/// ([`BeneathError::PermissionDenied`]).
fn read_outputs<E: OutputEncoder>(
    root: &RootDir,
    outputs: Vec<(String, String)>,
    encoder: &E,
    cfg: &super::EngineConfig,
    user: BuildUser,
) -> Result<Vec<Output<E::Encoded>>, BuildError> {
    // A root build user (the operator's choice) could read anything: nothing to check.
    let reader = (user.uid != 0).then_some(user);
    let total_limit = cfg.max_outputs_total_bytes;
    let mut total = 0u64;
    let mut read = Vec::with_capacity(outputs.len());
    for (path, full) in outputs {
        if is_dev_null(&full) {
            let data =
                encoder
                    .encode(&mut io::empty(), 0)
                    .map_err(|source| BuildError::OutputEncode {
                        path: path.clone(),
                        source,
                    })?;
            read.push(Output { path, data });
            continue;
        }
        let (file, size) =
            match untrusted::open_file_beneath(root, &full, cfg.max_output_bytes, reader) {
                Ok(f) => f,
                Err(BeneathError::Missing { .. }) => continue,
                Err(source) => return Err(BuildError::Output { path, source }),
            };
        let left = total_limit - total;
        if size > left {
            return Err(BuildError::OutputsTooLarge {
                path,
                limit: total_limit,
            });
        }
        let limit = left.min(cfg.max_output_bytes);
        let mut metered = Metered {
            file,
            limit,
            read: 0,
            over_limit: false,
            read_error: None,
        };
        let encoded = {
            let mut chunked = io::BufReader::with_capacity(OUTPUT_CHUNK_BYTES, &mut metered);
            encoder.encode(&mut chunked, size)
        };
        // The flags come first: an encoder may also swallow an error and stop early.
        if metered.over_limit {
            return Err(if metered.read > cfg.max_output_bytes {
                BuildError::Output {
                    source: BeneathError::TooLarge {
                        path: full,
                        size: metered.read,
                        limit: cfg.max_output_bytes,
                    },
                    path,
                }
            } else {
                BuildError::OutputsTooLarge {
                    path,
                    limit: total_limit,
                }
            });
        }
        if let Some(source) = metered.read_error.take() {
            return Err(BuildError::Output {
                source: BeneathError::Io {
                    op: "read",
                    path: full,
                    source,
                },
                path,
            });
        }
        let data = encoded.map_err(|source| BuildError::OutputEncode {
            path: path.clone(),
            source,
        })?;
        total += metered.read;
        read.push(Output { path, data });
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_paths_resolve_against_cwd_and_refuse_escapes() {
        assert_eq!(output_beneath("/work", "a.o").unwrap(), "/work/a.o");
        assert_eq!(
            output_beneath("/work/", "sub/a.o").unwrap(),
            "/work/sub/a.o"
        );
        assert_eq!(output_beneath("/work", "/tmp/x.o").unwrap(), "/tmp/x.o");
        // `..` before the file name is the sandbox's to resolve (make's `-o ../obj/a.o`).
        assert_eq!(
            output_beneath("/work/src", "../obj/a.o").unwrap(),
            "/work/src/../obj/a.o"
        );
        for bad in ["", "a\0.o", "sub/..", "..", "/work/a.o/.."] {
            assert!(output_beneath("/work", bad).is_err(), "{bad:?}");
        }
        assert_eq!(normalized("/work/src/../obj/./a.o"), "/work/obj/a.o");
        assert_eq!(normalized("/work/../../../a.o"), "/a.o");
        assert_eq!(parent_of("/work/sub/a.o"), Some("/work/sub"));
        assert_eq!(parent_of("/a.o"), None);
        assert_eq!(normalized("/work//./sub/a.o/"), "/work/sub/a.o");
    }

    #[test]
    fn a_file_growing_past_its_limit_while_read_is_caught() {
        let mut tmp = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut tmp, &[1u8; 100]).unwrap();
        io::Seek::rewind(&mut tmp).unwrap();
        let mut m = Metered {
            file: tmp,
            limit: 50,
            read: 0,
            over_limit: false,
            read_error: None,
        };
        assert!(RawOutput.encode(&mut m, 40).is_err());
        assert!(m.over_limit);
        assert_eq!(m.read, 51, "one byte past the limit, no more");
    }
}
