//! Packaging a host compiler into an sccache-compatible toolchain archive: a gzip'd tar of
//! a root holding the compiler, the programs its driver runs (cc1, as, ...), the shared
//! libraries all of them load, and optionally the system header directories. Files keep
//! their host paths, so `/usr/bin/gcc` names the same compiler inside the sandbox; symlinks
//! on the way (merged-/usr `lib -> usr/lib`, `gcc -> gcc-12`) are stored as symlinks and
//! their targets stored too, as `sccache --package-toolchain` does.
//!
//! Host-side tooling, never on a build's hot path: it asks the compiler and `ldd` (spawned)
//! what the compiler needs.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

mod elf;
mod ldd;

#[derive(Debug, thiserror::Error)]
pub enum ToolchainError {
    #[error("compiler {0:?} not found in PATH")]
    CompilerNotFound(String),
    #[error("running {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the archive: {0}")]
    Write(#[source] io::Error),
}

/// What to package.
#[derive(Clone, Debug)]
pub struct PackageOptions {
    /// A compiler name (looked up in PATH) or path: "gcc", "/usr/bin/clang".
    pub compiler: String,
    /// Include the compiler's system header directories (needed to compile sources that
    /// include <stdio.h>; sccache's own dist compiles send preprocessed input instead).
    pub headers: bool,
    /// More files or directories to include.
    pub extra: Vec<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageSummary {
    /// The compiler's path as stored (and as it is named inside the sandbox).
    pub compiler: PathBuf,
    pub files: usize,
    pub symlinks: usize,
    pub bytes: u64,
}

enum Entry {
    Dir,
    File,
    Symlink(PathBuf),
}

/// Collects paths with all their ancestors, storing symlinks as symlinks.
#[derive(Default)]
struct Collector {
    entries: BTreeMap<PathBuf, Entry>,
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> ToolchainError + '_ {
    move |source| ToolchainError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// Lexically joins `link`'s target onto its directory, resolving `.` and `..`.
fn resolve_link(dir: &Path, target: &Path) -> PathBuf {
    let mut out = if target.is_absolute() {
        PathBuf::from("/")
    } else {
        dir.to_path_buf()
    };
    for c in target.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

impl Collector {
    /// Adds `path` (absolute), following symlinks on the way and storing each.
    fn add(&mut self, path: &Path, depth: usize) -> Result<(), ToolchainError> {
        if depth > 40 {
            return Ok(()); // a symlink loop on the host: stop, the sandbox will see ELOOP too
        }
        let mut cur = PathBuf::from("/");
        let comps: Vec<_> = path
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        for (i, comp) in comps.iter().enumerate() {
            let next = cur.join(comp);
            let md = fs::symlink_metadata(&next).map_err(read_err(&next))?;
            if md.file_type().is_symlink() {
                let target = fs::read_link(&next).map_err(read_err(&next))?;
                let resolved = resolve_link(&cur, &target);
                self.entries.insert(next.clone(), Entry::Symlink(target));
                let mut rest = resolved;
                for c in &comps[i + 1..] {
                    rest.push(c);
                }
                return self.add(&rest, depth + 1);
            }
            if md.is_dir() {
                self.entries.entry(next.clone()).or_insert(Entry::Dir);
            } else if i + 1 == comps.len() && md.is_file() {
                self.entries.insert(next.clone(), Entry::File);
            }
            cur = next;
        }
        Ok(())
    }

    /// Adds a directory tree (headers), symlinks stored as such with their targets added.
    fn add_tree(&mut self, dir: &Path) -> Result<(), ToolchainError> {
        self.add(dir, 0)?;
        let real = fs::canonicalize(dir).map_err(read_err(dir))?;
        for e in fs::read_dir(&real).map_err(read_err(&real))? {
            let e = e.map_err(read_err(&real))?;
            let p = e.path();
            let ty = e.file_type().map_err(read_err(&p))?;
            if ty.is_dir() {
                self.add_tree(&p)?;
            } else {
                self.add(&p, 0)?;
            }
        }
        Ok(())
    }

    fn files(&self) -> impl Iterator<Item = &PathBuf> {
        self.entries
            .iter()
            .filter(|(_, e)| matches!(e, Entry::File))
            .map(|(p, _)| p)
    }
}

fn run(program: &Path, args: &[&str]) -> Result<std::process::Output, ToolchainError> {
    Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| ToolchainError::Spawn {
            program: program.display().to_string(),
            source,
        })
}

/// Finds `name` in PATH (or takes it as a path).
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        let p = if p.is_absolute() {
            p
        } else {
            std::env::current_dir().ok()?.join(p)
        };
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// The shared libraries `ldd` says `path` loads (absolute paths).
fn shared_libs(path: &Path) -> Result<Vec<PathBuf>, ToolchainError> {
    let out = run(Path::new("ldd"), &[&path.to_string_lossy()])?;
    Ok(ldd::parse(&String::from_utf8_lossy(&out.stdout)))
}

/// The programs the compiler driver runs for `-c`, as absolute paths.
fn driver_programs(compiler: &Path) -> Result<Vec<PathBuf>, ToolchainError> {
    let mut out = Vec::new();
    for prog in ["cc1", "cc1plus", "as", "collect2", "lto-wrapper"] {
        let o = run(compiler, &[&format!("-print-prog-name={prog}")])?;
        let name = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if name.is_empty() {
            continue;
        }
        let p = if name.starts_with('/') {
            Some(PathBuf::from(&name))
        } else {
            which(&name)
        };
        if let Some(p) = p.filter(|p| p.is_file()) {
            out.push(p);
        }
    }
    Ok(out)
}

/// The compiler's `#include <...>` search directories.
fn include_dirs(compiler: &Path) -> Result<Vec<PathBuf>, ToolchainError> {
    let o = run(compiler, &["-E", "-Wp,-v", "-x", "c", "/dev/null"])?;
    let text = String::from_utf8_lossy(&o.stderr);
    let mut dirs = Vec::new();
    let mut inside = false;
    for l in text.lines() {
        if l.starts_with("#include <...>") {
            inside = true;
        } else if l.starts_with("End of search list") {
            break;
        } else if inside {
            let d = PathBuf::from(l.trim());
            if d.is_dir() {
                dirs.push(d);
            }
        }
    }
    Ok(dirs)
}

/// Packages the toolchain into `out` (gzip'd tar).
pub fn package(
    opts: &PackageOptions,
    out: &mut dyn Write,
) -> Result<PackageSummary, ToolchainError> {
    let compiler = which(&opts.compiler)
        .ok_or_else(|| ToolchainError::CompilerNotFound(opts.compiler.clone()))?;
    let mut c = Collector::default();
    c.add(&compiler, 0)?;
    for p in driver_programs(&compiler)? {
        c.add(&p, 0)?;
    }
    if opts.headers {
        for d in include_dirs(&compiler)? {
            c.add_tree(&d)?;
        }
    }
    for p in &opts.extra {
        if p.is_dir() {
            c.add_tree(p)?;
        } else {
            c.add(p, 0)?;
        }
    }
    // Shared libraries of every ELF file, to a fixed point (libraries load libraries).
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let pending: Vec<PathBuf> = c.files().filter(|p| !seen.contains(*p)).cloned().collect();
        if pending.is_empty() {
            break;
        }
        for f in pending {
            seen.insert(f.clone());
            if is_elf(&f) {
                // The loader execve(2) opens (FreeBSD's ldd does not list it).
                if let Some(interp) = elf::interpreter(&f).map_err(read_err(&f))? {
                    c.add(&interp, 0)?;
                }
                for lib in shared_libs(&f)? {
                    c.add(&lib, 0)?;
                }
            }
        }
    }
    write_archive(&c, out).map(|(files, symlinks, bytes)| PackageSummary {
        compiler,
        files,
        symlinks,
        bytes,
    })
}

fn write_archive(
    c: &Collector,
    out: &mut dyn Write,
) -> Result<(usize, usize, u64), ToolchainError> {
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let (mut files, mut symlinks, mut bytes) = (0, 0, 0);
    let rel = |p: &Path| p.strip_prefix("/").unwrap_or(p).to_path_buf();
    // Directories first, then files, then symlinks: a symlinked parent is never needed
    // because every file is stored at its resolved path.
    for pass in 0..3 {
        for (path, entry) in &c.entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            match (pass, entry) {
                (0, Entry::Dir) => {
                    let md = fs::metadata(path).map_err(read_err(path))?;
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(md.mode() & 0o7777);
                    h.set_mtime(md.mtime().max(0) as u64);
                    h.set_size(0);
                    tar.append_data(&mut h, rel(path), io::empty())
                        .map_err(ToolchainError::Write)?;
                }
                (1, Entry::File) => {
                    let f = fs::File::open(path).map_err(read_err(path))?;
                    let md = f.metadata().map_err(read_err(path))?;
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(md.mode() & 0o777);
                    h.set_mtime(md.mtime().max(0) as u64);
                    h.set_size(md.len());
                    tar.append_data(&mut h, rel(path), f)
                        .map_err(ToolchainError::Write)?;
                    files += 1;
                    bytes += md.len();
                }
                (2, Entry::Symlink(target)) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    tar.append_link(&mut h, rel(path), target)
                        .map_err(ToolchainError::Write)?;
                    symlinks += 1;
                }
                _ => {}
            }
        }
    }
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .map_err(ToolchainError::Write)?;
    Ok((files, symlinks, bytes))
}

/// A stable id for a toolchain archive (its content hash prefix), usable as a ToolchainId.
pub fn archive_id(archive: &Path) -> Result<String, ToolchainError> {
    use std::hash::Hasher;
    // Not cryptographic: this names local images for `run`/`demo`; sccache-dist supplies its
    // own archive ids (sha512) on the serve path.
    let data = fs::read(archive).map_err(read_err(archive))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(&data);
    let stem = archive
        .file_stem()
        .unwrap_or(OsStr::new("tc"))
        .to_string_lossy();
    let stem: String = stem
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(40)
        .collect();
    Ok(format!("{stem}-{:016x}-{}", h.finish(), data.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_links_lexically() {
        assert_eq!(
            resolve_link(Path::new("/usr/bin"), Path::new("gcc-12")),
            PathBuf::from("/usr/bin/gcc-12")
        );
        assert_eq!(
            resolve_link(Path::new("/"), Path::new("usr/lib")),
            PathBuf::from("/usr/lib")
        );
        assert_eq!(
            resolve_link(Path::new("/a/b"), Path::new("../../c")),
            PathBuf::from("/c")
        );
        assert_eq!(
            resolve_link(Path::new("/a"), Path::new("/x/y")),
            PathBuf::from("/x/y")
        );
    }

    #[test]
    fn packages_the_host_compiler_with_its_programs_and_libraries() {
        let Some(cc) = which("cc") else {
            println!("SKIP: no host C compiler");
            return;
        };
        let mut out = Vec::new();
        let opts = PackageOptions {
            compiler: cc.to_string_lossy().into(),
            headers: false,
            extra: vec![],
        };
        let s = package(&opts, &mut out).unwrap();
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(out.as_slice()));
        for e in ar.entries().unwrap() {
            names.push(e.unwrap().path().unwrap().to_string_lossy().into_owned());
        }
        // Every program the driver runs (gcc: cc1, as, collect2; clang: as), stored at its
        // resolved path, and the C library with its dynamic loader.
        // (FreeBSD's clang runs none: its assembler is integrated.)
        for prog in driver_programs(&cc).unwrap() {
            let stored = fs::canonicalize(&prog).unwrap();
            let stored = stored
                .strip_prefix("/")
                .unwrap()
                .to_string_lossy()
                .into_owned();
            assert!(names.contains(&stored), "{stored} missing: {names:?}");
        }
        assert!(names.iter().any(|n| n.contains("libc.so")), "libc missing");
        assert!(
            names
                .iter()
                .any(|n| n.contains("ld-linux") || n.contains("ld-elf")),
            "loader missing"
        );
        assert!(names.contains(&cc.strip_prefix("/").unwrap().to_string_lossy().into_owned()));
        assert!(s.files >= 4 && s.bytes > 0);
    }
}
