//! Link directives for libzfs_core and libnvpair (only with feature `link`).
//!
//! - FreeBSD: the base system ships `/lib/libzfs_core.so.2` and `/lib/libnvpair.so.2`
//!   (cddl/lib/Makefile.inc: `SHLIBDIR?= /lib`, `SHLIB_MAJOR?= 2`). The unversioned `.so`
//!   symlinks live in `/usr/lib` and belong to the development files (bsd.lib.mk installs them
//!   with the `development` tag), which a minimal pkgbase install may leave out. So link the
//!   versioned files by their exact name (`-l:libzfs_core.so.2`, understood by lld and GNU ld)
//!   from `/lib`: this works on every stock FreeBSD 14 and fails loudly, rather than linking a
//!   different ABI, if the major version ever changes.
//! - Linux (Debian `libzfslinux-dev`): plain `-lzfs_core -lnvpair`; the dev package provides
//!   the `.so` symlinks.
//!
//! Overrides: `JAILBUILDER_ZFS_LIB_DIR` adds a search directory (e.g. a FreeBSD sysroot's `lib`
//! when cross-linking); `JAILBUILDER_ZFS_UNVERSIONED=1` links `-lzfs_core -lnvpair` on FreeBSD.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=JAILBUILDER_ZFS_LIB_DIR");
    println!("cargo:rerun-if-env-changed=JAILBUILDER_ZFS_UNVERSIONED");

    if env::var_os("CARGO_FEATURE_LINK").is_none() {
        return;
    }

    // The target, not the host this build script runs on.
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let unversioned = env::var("JAILBUILDER_ZFS_UNVERSIONED").is_ok_and(|v| v == "1");

    if let Ok(dir) = env::var("JAILBUILDER_ZFS_LIB_DIR") {
        println!("cargo:rustc-link-search=native={dir}");
    }

    if target_os == "freebsd" && !unversioned {
        println!("cargo:rustc-link-search=native=/lib");
        println!("cargo:rustc-link-lib=dylib:+verbatim=libzfs_core.so.2");
        println!("cargo:rustc-link-lib=dylib:+verbatim=libnvpair.so.2");
    } else {
        println!("cargo:rustc-link-lib=dylib=zfs_core");
        println!("cargo:rustc-link-lib=dylib=nvpair");
    }
}
