//! Linux ports of sccache-dist's two other builders:
//!
//! - [`CliLinux`]: the seed's `PotBuilder` step sequence, every step a spawned CLI process.
//!   A "pot" is a tmpfs-backed overlay (toolchain image over a busybox base, as a pot is
//!   the toolchain over a FreeBSD base) plus a persistent net/ipc/uts/mount namespace held
//!   by `unshare ... sleep infinity` (the running jail). `jexec` is `nsenter -t HOLDER
//!   -n -i -u -m -- chroot ROOT`. Reset is `pot stop` (kill the holder), `pot revert`
//!   (umount, fresh tmpfs, mount the overlay again), `pot start` (a new holder).
//! - [`Bwrap`]: `OverlayBuilder` from sccache's build.rs: per compile a private mount
//!   namespace (a thread), an overlay over the unpacked toolchain, inputs unpacked from a
//!   chroot'ed thread, one `bwrap` process with the same flags, outputs read the same way,
//!   the build directory removed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use jailbuilder::linux::{
    compact_memory, large_folios_of, refill_page_cache, refill_page_cache_file, FolioCount,
    Refilled, LARGE_FOLIO_TARGET,
};

use super::strategy::{check_compile, env_vars, Job, SeedCleanups, Spawner, Strategy};
use super::workload::CWD;

/// The directories of the bench root the strategies mount beneath (cli's and bwrap's
/// layers, bare's tmpfs): emptied of mounts before a run and after it.
pub const MOUNTED_DIRS: [&str; 3] = ["cli", "bwrap", "work"];

/// Unmounts everything mounted beneath `prefix` (deepest first): leftovers of a crashed run.
pub fn unmount_beneath(prefix: &Path) -> anyhow::Result<()> {
    for _ in 0..8 {
        let info = fs::read_to_string("/proc/self/mountinfo")?;
        let mut points: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| PathBuf::from(p.replace("\\040", " ")))
            .filter(|p| p.starts_with(prefix))
            .collect();
        if points.is_empty() {
            return Ok(());
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            let _ = umount2(&p, MntFlags::MNT_DETACH);
        }
    }
    bail!("cannot unmount everything beneath {}", prefix.display())
}

pub fn mount_tmpfs(path: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(path)?;
    mount(
        Some("jbbench"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .with_context(|| format!("mounting a tmpfs on {}", path.display()))
}

/// A busybox-static layer with the few commands the seed runs inside a pot.
pub fn make_base_layer(dir: &Path) -> anyhow::Result<()> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("the cli strategy needs busybox (Debian: busybox-static) for sh, mkdir, cat and env inside the sandbox")?;
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    let bin = dir.join("usr/bin");
    fs::create_dir_all(&bin)?;
    fs::copy(busybox, bin.join("busybox"))?;
    for tool in ["sh", "mkdir", "cat", "env"] {
        std::os::unix::fs::symlink("busybox", bin.join(tool))?;
    }
    for d in ["tmp", "dev", "proc"] {
        fs::create_dir_all(dir.join(d))?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------ cli

struct Pot {
    name: String,
    root: PathBuf,
    tmp: PathBuf,
    holder: Child,
}

struct CliInner {
    dir: PathBuf,
    lowers: String,
    compiler: String,
    spawner: Spawner,
    next: AtomicU64,
    ready: Mutex<Vec<Pot>>,
    cleanups: SeedCleanups,
}

pub struct CliLinux {
    inner: Arc<CliInner>,
}

impl CliLinux {
    /// `image` is the unpacked toolchain, `base` the busybox layer beneath it.
    pub fn new(dir: &Path, image: &Path, base: &Path, compiler: &str) -> anyhow::Result<CliLinux> {
        for tool in [
            "nsenter", "unshare", "chroot", "mount", "umount", "mkdir", "kill",
        ] {
            if jailbuilder::toolchain::which(tool).is_none() {
                bail!("the cli strategy needs `{tool}` (util-linux, coreutils)");
            }
        }
        fs::create_dir_all(dir)?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(CliLinux {
            inner: Arc::new(CliInner {
                dir: dir.to_path_buf(),
                lowers: format!("{}:{}", image.display(), base.display()),
                compiler: compiler.to_string(),
                spawner: Spawner::default(),
                next: AtomicU64::new(0),
                ready: Mutex::new(Vec::new()),
                cleanups: SeedCleanups::new(cores * 3),
            }),
        })
    }
}

impl CliInner {
    /// `pot revert`'s part: a fresh tmpfs and the overlay on it.
    fn mount_layers(&self, pot: &Path, root: &Path, tmp: &Path) -> anyhow::Result<()> {
        let sp = &self.spawner;
        sp.check_run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "mode=0755", "jbbench"])
                .arg(tmp),
        )?;
        sp.check_run(
            Command::new("mkdir")
                .arg("-p")
                .arg(tmp.join("upper"))
                .arg(tmp.join("work")),
        )?;
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lowers,
            tmp.join("upper").display(),
            tmp.join("work").display()
        );
        sp.check_run(
            Command::new("mount")
                .args(["-t", "overlay", "-o", &opts, "jbbench"])
                .arg(root),
        )
        .with_context(|| format!("pot {}", pot.display()))?;
        Ok(())
    }

    /// `pot start`: the persistent namespaces, held by a sleeping process.
    fn start_holder(&self) -> anyhow::Result<Child> {
        let mut child = self.spawner.spawn(
            Command::new("unshare")
                .args([
                    "--net",
                    "--ipc",
                    "--uts",
                    "--mount",
                    "--propagation",
                    "private",
                    "sleep",
                    "infinity",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        // Ready once unshare(1) has exec'd sleep: the namespaces exist.
        let comm = format!("/proc/{}/comm", child.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep") {
                return Ok(child);
            }
            if let Some(st) = child.try_wait()? {
                bail!("unshare exited with {st}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("unshare did not start within 5 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// `pot clone` + `pot snapshot` + `pot start` (start_container).
    fn start_container(&self) -> anyhow::Result<Pot> {
        let name = format!("p{}", self.next.fetch_add(1, Ordering::Relaxed));
        let pot = self.dir.join(&name);
        let (root, tmp) = (pot.join("root"), pot.join("tmp"));
        self.spawner
            .check_run(Command::new("mkdir").arg("-p").arg(&root).arg(&tmp))?;
        self.mount_layers(&pot, &root, &tmp)?;
        let holder = self.start_holder()?;
        Ok(Pot {
            name,
            root,
            tmp,
            holder,
        })
    }

    /// `jexec CID ...`.
    fn jexec(&self, pot: &Pot) -> Command {
        let mut c = Command::new("nsenter");
        c.args([
            "-t",
            &pot.holder.id().to_string(),
            "-n",
            "-i",
            "-u",
            "-m",
            "--",
            "chroot",
        ])
        .arg(&pot.root);
        c
    }

    /// `pot stop`, `pot revert`, `pot start` (clean_container).
    fn clean_container(&self, pot: &mut Pot) -> anyhow::Result<()> {
        self.spawner
            .check_run(Command::new("kill").args(["-KILL", &pot.holder.id().to_string()]))?;
        pot.holder.wait()?;
        self.spawner
            .check_run(Command::new("umount").arg(&pot.root))?;
        self.spawner
            .check_run(Command::new("umount").arg(&pot.tmp))?;
        let dir = self.dir.join(&pot.name);
        self.mount_layers(&dir, &pot.root, &pot.tmp)?;
        pot.holder = self.start_holder()?;
        Ok(())
    }

    fn destroy(&self, mut pot: Pot) {
        let _ = pot.holder.kill();
        let _ = pot.holder.wait();
        let _ = umount2(&pot.root, MntFlags::MNT_DETACH);
        let _ = umount2(&pot.tmp, MntFlags::MNT_DETACH);
        let _ = fs::remove_dir_all(self.dir.join(&pot.name));
    }

    /// perform_build.
    fn perform_build(&self, pot: &Pot, job: &Job<'_>) -> anyhow::Result<Vec<u8>> {
        tar::Archive::new(job.inputs)
            .unpack(&pot.root)
            .context("Failed to unpack inputs to pot")?;
        let cwd = Path::new(CWD);
        let object = job.unit.object();
        let mut cmd = self.jexec(pot);
        cmd.args(["mkdir", "-p"]).arg(cwd);
        if let Some(p) = Path::new(&object).parent() {
            cmd.arg(cwd.join(p));
        }
        self.spawner
            .check_run(&mut cmd)
            .context("Failed to create directories required for compile in container")?;

        let mut cmd = self.jexec(pot);
        cmd.arg("env");
        for (k, v) in env_vars() {
            cmd.arg(format!("{k}={v}"));
        }
        cmd.args(["sh", "-c", "cd \"$1\" && shift && exec \"$@\""]);
        cmd.arg(&self.compiler)
            .arg(cwd)
            .arg(&self.compiler)
            .args(job.args());
        let out = self.spawner.output(&mut cmd)?;
        check_compile("cli", job.unit, out.status.success(), &out.stderr)?;

        let out = self
            .spawner
            .output(self.jexec(pot).arg("cat").arg(cwd.join(&object)))?;
        if !out.status.success() {
            bail!("cli: missing output {object}");
        }
        Ok(out.stdout)
    }
}

impl Strategy for CliLinux {
    fn name(&self) -> &'static str {
        "cli"
    }

    fn compile(&self, job: &Job<'_>) -> anyhow::Result<Vec<u8>> {
        let inner = &self.inner;
        let pot = inner.ready.lock().unwrap().pop();
        let pot = match pot {
            Some(p) => p,
            None => inner.start_container()?,
        };
        let result = inner.perform_build(&pot, job);
        // As the seed: a cleanup thread per build, spinning while too many run.
        inner.cleanups.begin();
        let bg = Arc::clone(inner);
        std::thread::spawn(move || {
            let mut pot = pot;
            let t = Instant::now();
            let mut took = None;
            match bg.clean_container(&mut pot) {
                Ok(()) => {
                    took = Some(t.elapsed());
                    bg.ready.lock().unwrap().push(pot);
                }
                Err(e) => {
                    eprintln!(
                        "jailbuilder bench: cli: cleaning pot {} failed: {e:#}",
                        pot.name
                    );
                    bg.destroy(pot);
                }
            }
            bg.cleanups.end(took);
        });
        result
    }

    fn settle(&self) {
        self.inner.cleanups.settle();
    }

    fn spawned(&self) -> u64 {
        self.inner.spawner.count()
    }

    fn take_recycles(&self) -> Vec<Duration> {
        self.inner.cleanups.take_recycles()
    }

    fn recycle_what(&self) -> &'static str {
        "stop+revert+start (kill, umount x2, mount tmpfs, mkdir, mount overlay, unshare)"
    }

    fn shutdown(&self) -> anyhow::Result<()> {
        self.settle();
        let pots = std::mem::take(&mut *self.inner.ready.lock().unwrap());
        for p in pots {
            self.inner.destroy(p);
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------ bwrap

pub struct Bwrap {
    dir: PathBuf,
    toolchain_dir: PathBuf,
    archive_id: String,
    bubblewrap: PathBuf,
    compiler: String,
    build_count: AtomicU64,
    spawner: Spawner,
    recycles: Mutex<Vec<Duration>>,
}

/// sccache's run_in_root: a thread with its own filesystem attributes, chroot'ed.
fn run_in_root<T: Send>(
    root: &Path,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            unshare(CloneFlags::CLONE_FS).context("Failed to unshare filesystem attributes")?;
            std::os::unix::fs::chroot(root).context("Failed to chroot")?;
            std::env::set_current_dir("/").context("Failed to chdir to new root")?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow!("Chroot thread exited unsuccessfully")))
    })
}

/// sccache's join_suffix: `root` joined with `path` made relative.
fn join_suffix(root: &Path, path: &Path) -> PathBuf {
    let rel: PathBuf = path
        .components()
        .filter(|c| !matches!(c, std::path::Component::RootDir))
        .collect();
    root.join(rel)
}

impl Bwrap {
    /// `toolchain_dir` is the unpacked toolchain (sccache's toolchains/<archive_id>); build
    /// directories go in `dir/builds`, a tmpfs.
    pub fn new(
        dir: &Path,
        toolchain_dir: &Path,
        archive_id: &str,
        compiler: &str,
    ) -> anyhow::Result<Bwrap> {
        let bubblewrap = jailbuilder::toolchain::which("bwrap")
            .context("the bwrap strategy needs bubblewrap (Debian: bubblewrap)")?;
        let out = Command::new(&bubblewrap)
            .arg("--version")
            .output()
            .context("Failed to execute bwrap for version check")?;
        let version = String::from_utf8_lossy(&out.stdout);
        if !version.starts_with("bubblewrap ") {
            bail!("unexpected `bwrap --version`: {version:?}");
        }
        let builds = dir.join("builds");
        mount_tmpfs(&builds)?;
        Ok(Bwrap {
            dir: dir.to_path_buf(),
            toolchain_dir: toolchain_dir.to_path_buf(),
            archive_id: archive_id.to_string(),
            bubblewrap,
            compiler: compiler.to_string(),
            build_count: AtomicU64::new(0),
            spawner: Spawner::default(),
            recycles: Mutex::new(Vec::new()),
        })
    }

    fn perform_build(&self, job: &Job<'_>, build_dir: &Path) -> anyhow::Result<Vec<u8>> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    unshare(CloneFlags::CLONE_NEWNS)
                        .context("Failed to enter a new Linux namespace")?;
                    mount(
                        None::<&str>,
                        "/",
                        None::<&str>,
                        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                        None::<&str>,
                    )
                    .context("Failed to turn / into a slave")?;
                    let work_dir = build_dir.join("work");
                    let upper_dir = build_dir.join("upper");
                    let target_dir = build_dir.join("target");
                    fs::create_dir(&work_dir).context("Failed to create overlay work directory")?;
                    fs::create_dir(&upper_dir)
                        .context("Failed to create overlay upper directory")?;
                    fs::create_dir(&target_dir)
                        .context("Failed to create overlay target directory")?;
                    let opts = format!(
                        "lowerdir={},upperdir={},workdir={}",
                        self.toolchain_dir.display(),
                        upper_dir.display(),
                        work_dir.display()
                    );
                    mount(
                        Some("overlay"),
                        &target_dir,
                        Some("overlay"),
                        MsFlags::empty(),
                        Some(opts.as_str()),
                    )
                    .context("Failed to mount overlay FS")?;

                    let cwd = Path::new(CWD);
                    let object = job.unit.object();
                    run_in_root(&target_dir, || {
                        let root = Path::new("/");
                        tar::Archive::new(job.inputs)
                            .unpack(root)
                            .context("Failed to unpack inputs to overlay")?;
                        fs::create_dir_all(join_suffix(root, cwd))
                            .context("Failed to create cwd")?;
                        if let Some(p) = Path::new(&object).parent() {
                            fs::create_dir_all(join_suffix(root, &cwd.join(p)))
                                .context("Failed to create an output directory")?;
                        }
                        Ok(())
                    })?;

                    let mut cmd = Command::new(&self.bubblewrap);
                    cmd.arg("--die-with-parent")
                        .args(["--cap-drop", "ALL"])
                        .args([
                            "--unshare-user",
                            "--unshare-cgroup",
                            "--unshare-ipc",
                            "--unshare-pid",
                            "--unshare-net",
                            "--unshare-uts",
                        ])
                        .arg("--bind")
                        .arg(&target_dir)
                        .arg("/")
                        .args(["--proc", "/proc"])
                        .args(["--dev", "/dev"])
                        .arg("--chdir")
                        .arg(cwd);
                    for (k, v) in env_vars() {
                        cmd.arg("--setenv").arg(k).arg(v);
                    }
                    cmd.arg("--").arg(&self.compiler).args(job.args());
                    let out = self.spawner.output(&mut cmd)?;
                    check_compile("bwrap", job.unit, out.status.success(), &out.stderr)?;

                    run_in_root(&target_dir, || {
                        let abspath = join_suffix(Path::new("/"), &cwd.join(&object));
                        fs::read(abspath).context("Failed to open output file")
                    })
                })
                .join()
                .unwrap_or_else(|_| Err(anyhow!("Build thread exited unsuccessfully")))
        })
    }
}

impl Strategy for Bwrap {
    fn name(&self) -> &'static str {
        "bwrap"
    }

    fn compile(&self, job: &Job<'_>) -> anyhow::Result<Vec<u8>> {
        // prepare_overlay_dirs
        let id = self.build_count.fetch_add(1, Ordering::Relaxed) + 1;
        let build_dir = self
            .dir
            .join("builds")
            .join(format!("{}-{id}", self.archive_id));
        fs::create_dir(&build_dir)?;
        let result = self.perform_build(job, &build_dir);
        // finish_overlay, before run_build returns
        let t = Instant::now();
        if let Err(e) = fs::remove_dir_all(&build_dir) {
            eprintln!(
                "jailbuilder bench: bwrap: removing {}: {e}",
                build_dir.display()
            );
        }
        self.recycles.lock().unwrap().push(t.elapsed());
        result
    }

    fn spawned(&self) -> u64 {
        self.spawner.count()
    }

    fn take_recycles(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.recycles.lock().unwrap())
    }

    fn recycle_what(&self) -> &'static str {
        "remove the build directory (on the critical path, as sccache does)"
    }

    fn shutdown(&self) -> anyhow::Result<()> {
        let _ = umount2(&self.dir.join("builds"), MntFlags::MNT_DETACH);
        Ok(())
    }
}

/// Puts every strategy's copy of the toolchain in the same page-cache state (read back into
/// large folios, `jailbuilder::linux::refill_page_cache`): native's images, the host
/// toolchain bare runs (the files the package holds), and the copy cli and bwrap lay
/// below their overlays. How a compiler's pages came into the cache moves a near-empty
/// compile by more than a millisecond, more than the sandbox costs; left alone, the bench
/// would compare page caches.
///
/// Reading a file back does not guarantee large folios (64 KiB or more, the `folios`
/// module): the kernel falls back to smaller ones when free memory is fragmented. So
/// memory is compacted first (`/proc/sys/vm/compact_memory`), and in a copy whose pages
/// are less than the backend's [`LARGE_FOLIO_TARGET`] in large folios, each file below it
/// is read back again, up to three times. The returned shares say how equal the copies
/// ended up.
pub fn refill_toolchains(
    root: &Path,
    archive: &Path,
    strategies: &[String],
) -> anyhow::Result<PageCacheState> {
    let mut dirs = Vec::new();
    // Only the copies of this run's strategies: the state directory keeps earlier runs'
    // images of the others.
    for (parent, users) in [
        ("native/images", &["native"][..]),
        ("native-fresh/images", &["native-fresh"]),
        ("native-overlay/images", &["native-overlay"]),
        ("toolchain", &["cli", "bwrap"]),
    ] {
        if !users.iter().any(|u| strategies.iter().any(|s| s == u)) {
            continue;
        }
        let Ok(entries) = fs::read_dir(root.join(parent)) else {
            continue;
        };
        // An image directory holds its layer in root/; a toolchain copy is the layer.
        let layer = if parent.ends_with("images") {
            "root"
        } else {
            ""
        };
        dirs.extend(entries.flatten().map(|e| (parent, e.path().join(layer))));
    }
    compact();
    let mut done = Refilled::default();
    for (_, dir) in &dirs {
        done.add(refill_page_cache(dir).with_context(|| format!("refilling {}", dir.display()))?);
    }
    // bare: the host's own files, by the package's names.
    let f = std::io::BufReader::new(fs::File::open(archive)?);
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut large_files = Vec::new();
    for entry in tar.entries()? {
        let entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let rel = entry.path()?.into_owned();
        if let Ok(Some(bytes)) = refill_page_cache_file(&Path::new("/").join(&rel)) {
            done.file(bytes);
            large_files.push(rel);
        }
    }
    let mut copies = vec![("bare".to_string(), PathBuf::from("/"))];
    for (parent, dir) in &dirs {
        copies.push((parent.trim_end_matches("/images").to_string(), dir.clone()));
    }
    let mut shares = Vec::new();
    for (name, root) in copies {
        let files: Vec<PathBuf> = large_files.iter().map(|rel| root.join(rel)).collect();
        let mut counts = folios_of(&files);
        for _ in 0..3 {
            if total(&counts).share() >= LARGE_FOLIO_TARGET {
                break;
            }
            compact();
            for (f, n) in files.iter().zip(&counts) {
                if n.share() < LARGE_FOLIO_TARGET {
                    let _ = refill_page_cache_file(f);
                }
            }
            counts = folios_of(&files);
        }
        shares.push((name, total(&counts).share()));
    }
    Ok(PageCacheState {
        refilled: done,
        files: large_files.len(),
        shares,
    })
}

/// What [`refill_toolchains`] did, and per strategy's copy the share of the pages of the
/// package's refilled files (`files` of them: ELF files of 64 KiB or more) in large folios.
pub struct PageCacheState {
    pub refilled: Refilled,
    pub files: usize,
    pub shares: Vec<(String, f64)>,
}

/// Each file's pages in the page cache, and how many are in large folios (an unreadable
/// file logged and counted as none).
fn folios_of(files: &[PathBuf]) -> Vec<FolioCount> {
    files
        .iter()
        .map(|f| {
            large_folios_of(f).unwrap_or_else(|e| {
                log::warn!("large folios of {}: {e}", f.display());
                FolioCount::default()
            })
        })
        .collect()
}

fn total(counts: &[FolioCount]) -> FolioCount {
    let mut all = FolioCount::default();
    for n in counts {
        all.add(*n);
    }
    all
}

/// The backend's memory compaction, best effort.
fn compact() {
    if let Err(e) = compact_memory() {
        log::warn!("compacting memory: {e}");
    }
}
