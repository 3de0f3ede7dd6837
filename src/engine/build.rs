//! One build end to end: image, container, inputs, directories, exec, outputs, recycle.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{BuildError, Engine};
use crate::backend::{Backend, ExecOutcome, ToolchainId};
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// As the request named it.
    pub path: String,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildOutcome {
    pub exec: ExecOutcome,
    /// The requested outputs that exist, in request order. A compile that failed usually
    /// produces none; a missing output is not an error.
    pub outputs: Vec<Output>,
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
    untrusted::split_checked(&full).map_err(|e| bad(&e.to_string()))?;
    Ok(full)
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
        let token = CancelToken::new().map_err(|e| BuildError::Backend {
            step: "creating the build's cancel pipe",
            backend: self.pool.backend.kind(),
            source: Box::new(e),
        })?;
        self.build_with_cancel(req, &Arc::new(token))
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
        let id = self.pool.started(cancel);
        let result = self.build_inner(req, Some(cancel));
        self.pool.finished(id);
        self.pool.record_build(result.is_ok());
        result
    }

    fn build_inner(
        &self,
        req: BuildRequest<'_>,
        cancel: Option<&CancelToken>,
    ) -> Result<BuildOutcome, BuildError> {
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
        let outputs = req
            .outputs
            .iter()
            .map(|o| output_beneath(&cwd, o).map(|full| (o.clone(), full)))
            .collect::<Result<Vec<_>, _>>()?;

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
        let mut read = Vec::with_capacity(outputs.len());
        for (path, full) in outputs {
            match untrusted::read_file_beneath(&root, &full, cfg.max_output_bytes) {
                Ok(data) => read.push(super::Output { path, data }),
                Err(BeneathError::Missing { .. }) => {}
                Err(source) => return Err(BuildError::Output { path, source }),
            }
        }
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
        for bad in ["", "../a.o", "/work/../../etc/passwd", "a\0.o"] {
            assert!(output_beneath("/work", bad).is_err(), "{bad:?}");
        }
        assert_eq!(parent_of("/work/sub/a.o"), Some("/work/sub"));
        assert_eq!(parent_of("/a.o"), None);
    }
}
