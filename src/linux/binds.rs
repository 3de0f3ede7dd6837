//! Read-only bind mounts of an image's top-level directories over the container root, in
//! the container's mount namespace only, so that the compiler's path walks and opens in
//! them (its binaries, libraries and headers) bypass overlayfs.
//!
//! Why: every path component the compiler resolves inside the overlay is checked twice
//! (`ovl_permission`: the overlay inode with the caller's credentials, then the real inode
//! with the mounter's), every open makes a second (backing) file, every read goes through
//! it, and the VFS's shortcut for directories any user may search does not apply to a
//! filesystem with its own `permission` operation (fs/overlayfs/inode.c, fs/namei.c). On a
//! near-empty compile that was about 0.4 ms of CPU (README, Benchmark), more than any other
//! part of the sandbox. Through a bind of the image's own directory, the same lookups are
//! the lower filesystem's.
//!
//! What a bind must not change is what the build sees and may do. A directory `D` is bound
//! only when the overlay would show exactly the image's `D` and refuse the build user every
//! change in it:
//! - `D` is a real directory at the top of the image (not a symlink), and neither the
//!   skeleton layer (above the image) nor the base layer (below) has an entry of that name,
//!   so no other layer contributes to the merged view;
//! - nothing in its tree is writable by group or others and everything is owned by root
//!   (the unpacker creates every entry as root): the build user, never root and never in
//!   group 0, could change nothing there through the overlay either (it would get EACCES,
//!   through the bind EROFS);
//! - the walk is bounded ([`MAX_ENTRIES`], [`MAX_DEPTH`]): a tree past either is not bound.
//!
//! The engine itself writes through the overlay's mount in the server's namespace (inputs,
//! working and output directories), which the binds do not cover: a build whose inputs or
//! directories land under a bound `D` creates `D` in the upper layer, and there the bind
//! would hide them. So before each command the backend looks for the bound names in the
//! upper layer ([`Binds::shadowed`]) and, if one is there, detaches the binds for that
//! container (a plain overlay again, as before binds existed); its next reset is a fresh
//! one, which attaches them again.

use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Entries walked per image before giving up on binds (gcc with its headers is ~8 000).
pub(super) const MAX_ENTRIES: usize = 200_000;
/// Directory depth walked before giving up on binds.
pub(super) const MAX_DEPTH: usize = 64;

/// The top-level directories of `image` that can be bound read-only over the container root
/// (see the module comment), sorted by name; `skel` names the skeleton layer's top-level
/// entries. Errors only mean "none": the caller logs them.
pub(super) fn bindable(
    image: &Path,
    skel: &[&str],
    base: Option<&Path>,
) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    let mut budget = MAX_ENTRIES;
    for entry in std::fs::read_dir(image)? {
        let entry = entry?;
        let name = entry.file_name();
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let in_base = |layer: &Path| std::fs::symlink_metadata(layer.join(&name)).is_ok();
        if skel.iter().any(|s| name == *s) || base.is_some_and(in_base) {
            continue;
        }
        if unchangeable(&entry.path(), 0, &mut budget)? {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// True when nobody but root may change anything in the tree at `path` (a directory):
/// every entry root's, none writable by group or others. Symlinks' own modes are ignored
/// (always 0777, never consulted). Counts entries against `budget`.
fn unchangeable(path: &Path, depth: usize, budget: &mut usize) -> io::Result<bool> {
    let md = std::fs::symlink_metadata(path)?;
    if md.uid() != 0 || (!md.file_type().is_symlink() && md.mode() & 0o022 != 0) {
        return Ok(false);
    }
    if !md.is_dir() {
        return Ok(true);
    }
    if depth >= MAX_DEPTH {
        return Ok(false);
    }
    for entry in std::fs::read_dir(path)? {
        if *budget == 0 {
            return Ok(false);
        }
        *budget -= 1;
        if !unchangeable(&entry?.path(), depth + 1, budget)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A container's binds: for each bound name, the image directory and the name's path in
/// the container's upper layer (checked before each command).
#[derive(Debug, Default)]
pub(super) struct Binds {
    /// (image directory, name at the root), sorted by name.
    pub dirs: Vec<(PathBuf, OsString)>,
    /// `upper/<name>` for each, NUL-terminated for an allocation-free check.
    upper_paths: Vec<CString>,
}

impl Binds {
    pub(super) fn new(image_root: &Path, names: &[OsString], upper: &Path) -> Binds {
        let mut b = Binds::default();
        for name in names {
            // A name from read_dir has no NUL byte; skip one anyway rather than panic.
            let Ok(upper_path) = CString::new(upper.join(name).as_os_str().as_bytes()) else {
                continue;
            };
            b.dirs.push((image_root.join(name), name.clone()));
            b.upper_paths.push(upper_path);
        }
        b
    }

    pub(super) fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    /// True when the upper layer holds an entry of a bound name: something the engine wrote
    /// through the overlay (inputs, directories) that the bind would hide.
    pub(super) fn shadowed(&self) -> bool {
        self.upper_paths.iter().any(|p| {
            // SAFETY: a zeroed stat is valid; fstatat(2) with a NUL-terminated path writes
            // only into it.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let r = unsafe {
                libc::fstatat(
                    libc::AT_FDCWD,
                    p.as_ptr(),
                    &mut st,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            // Any answer but "not there" counts as there: detaching is always correct.
            r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::skip_unless_root;
    use std::os::unix::fs::PermissionsExt;

    const SKEL: &[&str] = &["dev", "proc", "tmp"];

    fn tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let (image, base) = (t.path().join("image"), t.path().join("base"));
        for d in [
            "usr/lib/gcc",
            "usr/include",
            "opt/tool",
            "etc",
            "tmp",
            "srv/pub",
            "var",
        ] {
            std::fs::create_dir_all(image.join(d)).unwrap();
        }
        std::fs::write(image.join("usr/include/stdio.h"), "").unwrap();
        std::fs::create_dir_all(base.join("var")).unwrap();
        std::os::unix::fs::symlink("usr/lib", image.join("lib")).unwrap();
        for p in [&image, &base] {
            set_modes(p);
        }
        (t, image, base)
    }

    /// 0755 directories, 0644 files: what a tempdir under a 022 umask makes anyway, fixed
    /// here so that the test does not depend on the umask.
    fn set_modes(p: &Path) {
        for e in walk(p) {
            let md = std::fs::symlink_metadata(&e).unwrap();
            if md.file_type().is_symlink() {
                continue;
            }
            let mode = if md.is_dir() { 0o755 } else { 0o644 };
            std::fs::set_permissions(&e, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }

    fn walk(p: &Path) -> Vec<PathBuf> {
        let mut v = vec![p.to_path_buf()];
        if std::fs::symlink_metadata(p).unwrap().is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                v.extend(walk(&e.unwrap().path()));
            }
        }
        v
    }

    fn names(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn only_real_root_owned_unwritable_directories_no_other_layer_has_are_bindable() {
        if skip_unless_root("bindable directories", "the tree must be root's") {
            return;
        }
        let (_t, image, base) = tree();
        // A world-writable directory deep inside, and a group-writable file.
        std::fs::set_permissions(
            image.join("srv/pub"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        std::fs::write(image.join("opt/tool/config"), "").unwrap();
        std::fs::set_permissions(
            image.join("opt/tool/config"),
            std::fs::Permissions::from_mode(0o664),
        )
        .unwrap();
        // `lib` is a symlink, `tmp` is in skel, `var` in base, `srv` and `opt` writable.
        assert_eq!(
            bindable(&image, SKEL, Some(&base)).unwrap(),
            names(&["etc", "usr"])
        );
        assert_eq!(
            bindable(&image, SKEL, None).unwrap(),
            names(&["etc", "usr", "var"])
        );
        // A file of another owner makes its tree unbindable too.
        std::os::unix::fs::chown(image.join("usr/include/stdio.h"), Some(1000), None).unwrap();
        assert_eq!(
            bindable(&image, SKEL, None).unwrap(),
            names(&["etc", "var"])
        );
    }

    #[test]
    fn a_tree_past_the_walk_bounds_is_not_bound() {
        if skip_unless_root("bindable directories", "the tree must be root's") {
            return;
        }
        let (_t, image, _base) = tree();
        let mut deep = image.join("var");
        for _ in 0..MAX_DEPTH {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        set_modes(&image);
        assert_eq!(
            bindable(&image, SKEL, None).unwrap(),
            names(&["etc", "opt", "srv", "usr"])
        );
        let mut budget = 3;
        assert!(!unchangeable(&image.join("usr"), 0, &mut budget).unwrap());
    }

    #[test]
    fn a_name_in_the_upper_layer_is_seen_as_shadowing_its_bind() {
        let t = tempfile::tempdir().unwrap();
        let upper = t.path().join("upper");
        std::fs::create_dir(&upper).unwrap();
        let b = Binds::new(Path::new("/image"), &names(&["etc", "usr"]), &upper);
        assert_eq!(
            b.dirs[1],
            (PathBuf::from("/image/usr"), OsString::from("usr"))
        );
        assert!(!b.shadowed());
        std::fs::create_dir(upper.join("usr")).unwrap();
        assert!(b.shadowed());
        std::fs::remove_dir(upper.join("usr")).unwrap();
        std::os::unix::fs::symlink("/nowhere", upper.join("etc")).unwrap();
        assert!(b.shadowed(), "a dangling symlink is an entry");
        assert!(Binds::default().is_empty() && !Binds::default().shadowed());
    }
}
