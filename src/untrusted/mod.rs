//! The one place that handles client-supplied data: toolchain and input archives, and
//! output paths. Everything here works beneath a root directory without ever following a
//! symlink out of it: each path component is opened with `O_NOFOLLOW` relative to its
//! parent's descriptor, so a symlink planted by an archive or a build is never traversed
//! on the host side. Absolute names are taken relative to the root. `..` is refused in
//! archive entries; in the paths the sandbox itself resolves (outputs and their
//! directories) it is applied as the kernel applies it there, never above the root.

mod beneath;
mod file_flags;
#[cfg(target_os = "linux")]
mod ld_cache;
mod tar_guard;
mod unpack;

pub use beneath::{make_dirs_beneath, open_file_beneath, read_file_beneath, BeneathError, RootDir};
#[cfg(target_os = "linux")]
pub use ld_cache::{write_for_image as write_ld_cache, LdCache};
/// Checks a client path the way every function here will: no `..`, no NUL, bounded
/// lengths, not the root itself.
pub fn split_checked(path: &str) -> Result<(), BeneathError> {
    beneath::split(path.as_bytes()).map(|_| ())
}

/// Checks an output path the way [`open_file_beneath`] will: as [`split_checked`], except
/// that `..` may stand before the final component (a compile in `src/` writing
/// `../obj/a.o`, as make and cmake builds do), resolved inside the sandbox.
pub fn check_output_path(path: &str) -> Result<(), BeneathError> {
    beneath::split_resolving(path.as_bytes(), beneath::DotDot::InParents).map(|_| ())
}

pub use tar_guard::{ExtensionTooLarge, MAX_EXTENSION_BYTES};
pub use unpack::{unpack_tar, unpack_tar_gz, UnpackError, UnpackLimits, UnpackStats};

#[cfg(test)]
mod tests;
