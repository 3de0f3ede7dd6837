//! What the FreeBSD orchestration tests share: the backend type over the fake kernel, a
//! build user, and a small toolchain archive.

use std::path::Path;
use std::sync::Arc;

use super::{FakeKernel, FreeBsdBackend, FreeBsdConfig};
use crate::backend::BuildUser;

pub(super) type Fb = FreeBsdBackend<Arc<FakeKernel>>;

/// The tests' configuration: datasets under `pool/jb`, mounts under the fake's `mnt/`.
pub(super) fn config(fake: &FakeKernel) -> FreeBsdConfig {
    FreeBsdConfig {
        dataset_root: "pool/jb".into(),
        mount_root: fake.base().join("mnt"),
        ..FreeBsdConfig::default()
    }
}

/// A backend on `fake` with [`config`], not yet started.
pub(super) fn backend_on(fake: &Arc<FakeKernel>) -> Fb {
    FreeBsdBackend::new(fake.clone(), config(fake)).unwrap()
}

/// The names in `dir`, sorted.
pub(super) fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub(super) const USER: BuildUser = BuildUser {
    uid: 1000,
    gid: 1000,
};

/// A gzip'd toolchain tar with `usr/`, `usr/bin/` and `work/`, and `usr/bin/cc` holding
/// `cc` when given.
pub(super) fn toolchain_tar_gz(cc: Option<&[u8]>) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for dir in ["usr/", "usr/bin/", "work/"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        tar.append_data(&mut h, dir, std::io::empty()).unwrap();
    }
    if let Some(body) = cc {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_size(body.len() as u64);
        tar.append_data(&mut h, "usr/bin/cc", body).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}
