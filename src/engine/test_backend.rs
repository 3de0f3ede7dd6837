//! A directory-backed [`Backend`] for unit tests of the engine and of everything above it
//! (the sccache glue): images are directories, containers copies of them, `exec` calls a
//! program closure given the container root; every call is logged and any step can be
//! made to fail. (The FreeBSD orchestration has its own fake kernel.)

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use crate::backend::{
    Backend, BuildUser, CleanupReport, ExecOutcome, ExistingImage, ExitStatus, Limits, ToolchainId,
};
use crate::exec::{CancelToken, PreparedCommand};
use crate::untrusted::{self, RootDir};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
/// A test backend error: the message, and whether it is the job's fault.
pub(crate) struct TestError(pub(crate) String, pub(crate) bool);

/// What `exec` runs: given the container root on the host and the command.
pub(crate) type Program =
    dyn Fn(&Path, &PreparedCommand) -> Result<ExecOutcome, TestError> + Send + Sync;

/// State the test keeps a handle on while the engine owns the backend.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) calls: Mutex<Vec<String>>,
    /// step -> calls left before it fails (0 = fail now); absent = never fails.
    pub(crate) faults: Mutex<HashMap<&'static str, usize>>,
    pub(crate) alive: AtomicUsize,
    pub(crate) max_alive: AtomicUsize,
    pub(crate) next: AtomicUsize,
    /// Image creation of a toolchain named "slow" waits on this barrier twice.
    pub(crate) slow_gate: Mutex<Option<Arc<Barrier>>>,
}

pub(crate) struct TestBackend {
    dir: PathBuf,
    shared: Arc<Shared>,
    program: Box<Program>,
}

pub(crate) struct TestContainer {
    root: PathBuf,
    image: PathBuf,
}

impl TestBackend {
    /// A backend keeping its directories under `dir`, running `program` on exec.
    pub(crate) fn new(
        dir: PathBuf,
        program: impl Fn(&Path, &PreparedCommand) -> Result<ExecOutcome, TestError>
            + Send
            + Sync
            + 'static,
    ) -> (TestBackend, Arc<Shared>) {
        let shared = Arc::new(Shared::default());
        let backend = TestBackend {
            dir,
            shared: Arc::clone(&shared),
            program: Box::new(program),
        };
        (backend, shared)
    }

    fn step(&self, name: &'static str, detail: String) -> Result<(), TestError> {
        self.shared
            .calls
            .lock()
            .unwrap()
            .push(format!("{name} {detail}"));
        let mut faults = self.shared.faults.lock().unwrap();
        if let Some(n) = faults.get_mut(name) {
            if *n == 0 {
                faults.remove(name);
                return Err(TestError(format!("injected failure in {name}"), false));
            }
            *n -= 1;
        }
        Ok(())
    }
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let ty = e.file_type().unwrap();
        let dest = to.join(e.file_name());
        if ty.is_dir() {
            copy_tree(&e.path(), &dest);
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(e.path()).unwrap(), dest).unwrap();
        } else {
            fs::copy(e.path(), dest).unwrap();
        }
    }
}

impl Backend for TestBackend {
    type Image = PathBuf;
    type Container = TestContainer;
    type Error = TestError;

    fn kind(&self) -> &'static str {
        "test"
    }

    fn is_job_error(&self, e: &TestError) -> bool {
        e.1
    }

    fn remove_leftovers(&self) -> Result<CleanupReport, TestError> {
        self.step("remove_leftovers", String::new())?;
        Ok(CleanupReport::default())
    }

    /// Every image directory an earlier backend on the same directory left, last used at
    /// the directory's mtime (tests set it).
    fn existing_images(&self) -> Result<Vec<ExistingImage<PathBuf>>, TestError> {
        self.step("existing_images", String::new())?;
        let Ok(entries) = fs::read_dir(self.dir.join("images")) else {
            return Ok(Vec::new());
        };
        let mut found = Vec::new();
        for e in entries.flatten() {
            let id = ToolchainId::new(e.file_name().to_string_lossy()).unwrap();
            let last_used = e.metadata().unwrap().modified().unwrap();
            found.push(ExistingImage {
                id,
                image: e.path(),
                last_used,
            });
        }
        Ok(found)
    }

    fn create_image(
        &self,
        id: &ToolchainId,
        tc: &mut dyn std::io::Read,
    ) -> Result<PathBuf, TestError> {
        self.step("create_image", id.to_string())?;
        if id.as_str() == "slow" {
            let gate = self.shared.slow_gate.lock().unwrap().clone();
            if let Some(g) = gate {
                g.wait(); // tell the test we are inside create_image
                g.wait(); // and wait until it lets us finish
            }
        }
        let dir = self.dir.join("images").join(id.as_str());
        fs::create_dir_all(&dir).unwrap();
        let root = RootDir::open(&dir).unwrap();
        if let Err(e) = untrusted::unpack_tar_gz(tc, &root, &Default::default()) {
            fs::remove_dir_all(&dir).unwrap();
            return Err(TestError(e.to_string(), true));
        }
        Ok(dir)
    }

    fn destroy_image(&self, image: PathBuf) -> Result<(), TestError> {
        self.step(
            "destroy_image",
            image.file_name().unwrap().to_string_lossy().into(),
        )?;
        fs::remove_dir_all(image).unwrap();
        Ok(())
    }

    fn create_container(&self, image: &PathBuf) -> Result<TestContainer, TestError> {
        self.step("create_container", String::new())?;
        let n = self.shared.next.fetch_add(1, Ordering::SeqCst);
        let root = self.dir.join(format!("c{n}"));
        copy_tree(image, &root);
        let alive = self.shared.alive.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.max_alive.fetch_max(alive, Ordering::SeqCst);
        Ok(TestContainer {
            root,
            image: image.clone(),
        })
    }

    fn root<'c>(&self, c: &'c TestContainer) -> &'c Path {
        &c.root
    }

    fn exec(
        &self,
        c: &TestContainer,
        cmd: &PreparedCommand,
        user: BuildUser,
        _l: &Limits,
        _cancel: Option<&CancelToken>,
    ) -> Result<ExecOutcome, TestError> {
        let container = c.root.file_name().unwrap_or_default().to_string_lossy();
        self.step(
            "exec",
            format!("{} as {} in {container}", cmd.spec().executable, user.uid),
        )?;
        if !c
            .root
            .join(cmd.spec().executable.trim_start_matches('/'))
            .exists()
        {
            return Err(TestError(
                format!("{} not found", cmd.spec().executable),
                true,
            ));
        }
        (self.program)(&c.root, cmd)
    }

    fn reset(&self, c: &mut TestContainer) -> Result<(), TestError> {
        self.step("reset", String::new())?;
        fs::remove_dir_all(&c.root).unwrap();
        copy_tree(&c.image, &c.root);
        Ok(())
    }

    fn destroy_container(&self, c: TestContainer) -> Result<(), TestError> {
        self.step("destroy_container", String::new())?;
        fs::remove_dir_all(&c.root).unwrap();
        self.shared.alive.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }

    fn clean_all(&self) -> Result<CleanupReport, TestError> {
        Ok(CleanupReport::default())
    }
}

/// An outcome with this status and output, nothing truncated.
pub(crate) fn outcome(status: ExitStatus, stdout: &[u8], stderr: &[u8]) -> ExecOutcome {
    ExecOutcome {
        status,
        stdout: stdout.to_vec(),
        stderr: stderr.to_vec(),
        stdout_truncated: false,
        stderr_truncated: false,
        limit_hit: None,
    }
}

/// A gzip'd toolchain archive holding only `usr/bin/cc` (the programs here are closures).
pub(crate) fn toolchain_tgz() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o755);
    h.set_cksum();
    b.append_data(&mut h, "usr/bin/cc", &b"cc"[..]).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &b.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}
