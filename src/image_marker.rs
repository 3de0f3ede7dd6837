//! The completeness marker of a kept toolchain image (both backends).
//!
//! A backend writes it as the last step of creating an image, after the content is
//! durable, so that an image found at start-up is trusted only when a marker of this
//! format names it: a directory a crash left half-built, one of an older layout, or
//! anything else found there is removed instead. The file is small text:
//!
//! ```text
//! jailbuilder-image 1
//! id <toolchain id>
//! entries <archive entries>
//! bytes <content bytes>
//! ```
//!
//! Its mtime says when the image was last used to make a container (refreshed by
//! [`touch`]), which orders images for the `max_images` bound at start-up.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::SystemTime;

use crate::backend::ToolchainId;
use crate::untrusted::UnpackStats;

/// Name of the marker file in the image's directory.
pub const FILE: &str = ".jailbuilder-image";
/// The format this version writes and the only one it adopts. Bump it whenever the image
/// layout changes in a way an older image would not satisfy.
pub const VERSION: u32 = 1;
const MAGIC: &str = "jailbuilder-image";
/// Longer than any marker this version writes.
const MAX_LEN: u64 = 1024;

/// Why a directory is not an image to adopt (a log line, a clean-up report line).
#[derive(Debug)]
pub enum Rejected {
    /// No marker: a partial image (or one of a version that wrote none).
    Missing,
    Unreadable(io::Error),
    /// Not a regular file, or too long.
    NotAFile,
    /// Not this format at all.
    Foreign,
    /// This format, another version.
    Version(String),
    /// Names another toolchain than its directory does.
    WrongId(String),
    /// Whatever else is wrong with the layout (what, then).
    Layout(&'static str),
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::Missing => write!(f, "no {FILE} marker (partial image)"),
            Rejected::Unreadable(e) => write!(f, "marker unreadable: {e}"),
            Rejected::NotAFile => write!(f, "marker is not a small regular file"),
            Rejected::Foreign => write!(f, "marker is not a jailbuilder image marker"),
            Rejected::Version(v) => {
                write!(
                    f,
                    "image format version {v:?}, this version reads {VERSION}"
                )
            }
            Rejected::WrongId(id) => write!(f, "marker names toolchain {id:?}"),
            Rejected::Layout(what) => f.write_str(what),
        }
    }
}

fn content(id: &ToolchainId, stats: &UnpackStats) -> String {
    format!(
        "{MAGIC} {VERSION}\nid {id}\nentries {}\nbytes {}\n",
        stats.entries, stats.bytes
    )
}

/// Writes the marker of image `id` into `dir`: to a temporary name, fsync'd, renamed
/// into place, and the directory fsync'd (rename(2) is atomic; fsync of the directory
/// makes the new entry durable, fsync(2)). Call only once the content is durable.
pub fn write(dir: &Path, id: &ToolchainId, stats: &UnpackStats) -> io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let path = dir.join(FILE);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    f.write_all(content(id, stats).as_bytes())?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()
}

/// Reads the marker in `dir` and checks it names `expected` in this version's format;
/// returns its mtime (when the image was last used).
pub fn read(dir: &Path, expected: &str) -> Result<SystemTime, Rejected> {
    let path = dir.join(FILE);
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Rejected::Missing),
        // O_NOFOLLOW on a symlink: ELOOP (open(2)).
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(Rejected::NotAFile),
        Err(e) => return Err(Rejected::Unreadable(e)),
    };
    let md = f.metadata().map_err(Rejected::Unreadable)?;
    if !md.is_file() || md.len() > MAX_LEN {
        return Err(Rejected::NotAFile);
    }
    let mut text = String::new();
    f.take(MAX_LEN)
        .read_to_string(&mut text)
        .map_err(|_| Rejected::Foreign)?;
    parse(&text, expected)?;
    md.modified().map_err(Rejected::Unreadable)
}

fn parse(text: &str, expected: &str) -> Result<(), Rejected> {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let Some(version) = first.strip_prefix(MAGIC).and_then(|r| r.strip_prefix(' ')) else {
        return Err(Rejected::Foreign);
    };
    if version != VERSION.to_string() {
        return Err(Rejected::Version(version.to_string()));
    }
    let mut id = None;
    for line in lines {
        if let Some(v) = line.strip_prefix("id ") {
            id = Some(v);
        }
    }
    match id {
        Some(id) if id == expected => Ok(()),
        Some(id) => Err(Rejected::WrongId(id.to_string())),
        None => Err(Rejected::Foreign),
    }
}

/// Sets the marker's mtime to now: the image was just used. Best effort (an error only
/// makes the start-up order of the `max_images` bound less exact).
pub fn touch(dir: &Path) {
    let r = File::open(dir.join(FILE)).and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(e) = r {
        log::debug!("refreshing the marker of image {}: {e}", dir.display());
    }
}

/// Removes the marker (and a temporary one), if any.
pub fn remove(dir: &Path) -> io::Result<()> {
    for name in [FILE.to_string(), format!("{FILE}.tmp")] {
        match fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ToolchainId {
        ToolchainId::new(s).unwrap()
    }

    #[test]
    fn a_written_marker_reads_back_for_its_id_only() {
        let dir = tempfile::tempdir().unwrap();
        let stats = UnpackStats {
            entries: 3,
            bytes: 42,
        };
        write(dir.path(), &id("tc1"), &stats).unwrap();
        assert!(read(dir.path(), "tc1").is_ok());
        assert!(matches!(read(dir.path(), "tc2"), Err(Rejected::WrongId(i)) if i == "tc1"));
        assert!(!dir.path().join(format!("{FILE}.tmp")).exists());
    }

    #[test]
    fn missing_foreign_and_other_versions_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read(dir.path(), "a"), Err(Rejected::Missing)));
        let path = dir.path().join(FILE);
        fs::write(&path, "hello\n").unwrap();
        assert!(matches!(read(dir.path(), "a"), Err(Rejected::Foreign)));
        fs::write(&path, "jailbuilder-image 0\nid a\n").unwrap();
        assert!(matches!(read(dir.path(), "a"), Err(Rejected::Version(v)) if v == "0"));
        fs::write(&path, "jailbuilder-image 1\n").unwrap();
        assert!(matches!(read(dir.path(), "a"), Err(Rejected::Foreign)));
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        assert!(matches!(read(dir.path(), "a"), Err(Rejected::NotAFile)));
    }
}
