//! Dataset and snapshot name validation, before a name reaches the kernel.
//!
//! Follows OpenZFS `module/zcommon/zfs_namecheck.c` (`entity_namecheck`, `dataset_namecheck`,
//! `snapshot_namecheck`, `dataset_nestcheck`, `pool_namecheck`):
//! - shorter than `ZFS_MAX_DATASET_NAME_LEN` (256) bytes, including the snapshot part;
//! - no leading or trailing `/`, no empty component (`a//b`, `a@`, `@s`);
//! - components made of `[A-Za-z0-9-_.: ]`; no component is `.` or `..`;
//! - at most one `@`, and no `/` after it; no `#` (bookmarks are not datasets);
//! - fewer than 50 `/` before the `@` (the default `zfs_max_dataset_nesting`);
//! - the first component (the pool) begins with a letter.
//!
//! One deliberate difference: OpenZFS also accepts `%` in dataset components because it names
//! its own temporary clones with it (`%recv`); jailbuilder never needs it and rejects it, so
//! our names can never collide with, or be mistaken for, those internal datasets.

use jailbuilder_zfs_sys::ZFS_MAX_DATASET_NAME_LEN;

/// Default of the `zfs_max_dataset_nesting` module parameter.
pub const MAX_NESTING: usize = 50;

/// Why a name is not a valid dataset or snapshot name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {len} bytes long, the limit is {max}", max = ZFS_MAX_DATASET_NAME_LEN - 1)]
    TooLong { len: usize },
    #[error("name begins with '/'")]
    LeadingSlash,
    #[error("name ends with '/'")]
    TrailingSlash,
    #[error("name has an empty component")]
    EmptyComponent,
    #[error("name contains the invalid character {0:?}")]
    InvalidChar(char),
    #[error("a component of the name is '.'")]
    SelfRef,
    #[error("a component of the name is '..'")]
    ParentRef,
    #[error("name has more than one '@'")]
    MultipleAt,
    #[error("snapshot part of the name contains '/'")]
    SlashInSnapshot,
    #[error("name is nested {depth} levels deep, the limit is {max}", max = MAX_NESTING - 1)]
    TooDeep { depth: usize },
    #[error("pool name must begin with a letter")]
    PoolNoLetter,
    #[error("expected a snapshot name (dataset@snapshot)")]
    NotASnapshot,
    #[error("expected a filesystem name, not a snapshot")]
    NotAFilesystem,
    #[error("snapshot {snapshot} does not belong to filesystem {filesystem}")]
    ForeignSnapshot {
        snapshot: String,
        filesystem: String,
    },
}

fn valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | ' ')
}

fn check_component(component: &str) -> Result<(), NameError> {
    if let Some(c) = component.chars().find(|&c| !valid_char(c)) {
        return Err(NameError::InvalidChar(c));
    }
    match component {
        "" => Err(NameError::EmptyComponent),
        "." => Err(NameError::SelfRef),
        ".." => Err(NameError::ParentRef),
        _ => Ok(()),
    }
}

/// Validates a filesystem or snapshot name (`pool/a/b` or `pool/a/b@snap`).
pub fn check_dataset(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() >= ZFS_MAX_DATASET_NAME_LEN {
        return Err(NameError::TooLong { len: name.len() });
    }
    if name.starts_with('/') {
        return Err(NameError::LeadingSlash);
    }
    if name.ends_with('/') {
        return Err(NameError::TrailingSlash);
    }
    let (path, snap) = match name.split_once('@') {
        Some((path, snap)) => (path, Some(snap)),
        None => (name, None),
    };
    for component in path.split('/') {
        check_component(component)?;
    }
    if let Some(snap) = snap {
        if snap.contains('@') {
            return Err(NameError::MultipleAt);
        }
        if snap.contains('/') {
            return Err(NameError::SlashInSnapshot);
        }
        check_component(snap)?;
    }
    let depth = path.matches('/').count();
    if depth >= MAX_NESTING {
        return Err(NameError::TooDeep { depth });
    }
    if !path.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(NameError::PoolNoLetter);
    }
    Ok(())
}

/// Validates a filesystem name: a dataset name without `@`.
pub fn check_filesystem(name: &str) -> Result<(), NameError> {
    check_dataset(name)?;
    if name.contains('@') {
        return Err(NameError::NotAFilesystem);
    }
    Ok(())
}

/// Validates a snapshot name: exactly one `@`, with a valid dataset before it.
pub fn check_snapshot(name: &str) -> Result<(), NameError> {
    check_dataset(name)?;
    if !name.contains('@') {
        return Err(NameError::NotASnapshot);
    }
    Ok(())
}

/// Splits a valid snapshot name into its filesystem and snapshot parts.
pub fn split_snapshot(name: &str) -> Result<(&str, &str), NameError> {
    check_snapshot(name)?;
    name.split_once('@').ok_or(NameError::NotASnapshot)
}

/// Validates that `snapshot` is a snapshot of the filesystem `filesystem`.
pub fn check_snapshot_of(filesystem: &str, snapshot: &str) -> Result<(), NameError> {
    check_filesystem(filesystem)?;
    let (fs, _) = split_snapshot(snapshot)?;
    if fs != filesystem {
        return Err(NameError::ForeignSnapshot {
            snapshot: snapshot.to_string(),
            filesystem: filesystem.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names() {
        for name in [
            "pool",
            "zroot/jb",
            "zroot/jb/img-3f2a_x86.64:1",
            "zroot/jb/with space",
            "z/a..b/.c/d.",
        ] {
            assert_eq!(check_filesystem(name), Ok(()), "{name}");
            assert_eq!(check_dataset(name), Ok(()), "{name}");
        }
        for name in ["zroot/jb/img@ready", "pool@s", "zroot/a/b@clean-1.0:x"] {
            assert_eq!(check_snapshot(name), Ok(()), "{name}");
            assert_eq!(check_dataset(name), Ok(()), "{name}");
        }
        assert_eq!(
            split_snapshot("zroot/jb/img@ready"),
            Ok(("zroot/jb/img", "ready"))
        );
        assert_eq!(
            check_snapshot_of("zroot/jb/c1", "zroot/jb/c1@clean"),
            Ok(())
        );
    }

    #[test]
    fn hostile_names() {
        use NameError::*;
        let cases: &[(&str, NameError)] = &[
            ("", Empty),
            ("/zroot/jb", LeadingSlash),
            ("zroot/jb/", TrailingSlash),
            ("zroot//jb", EmptyComponent),
            ("zroot/jb/..", ParentRef),
            ("zroot/../etc", ParentRef),
            ("zroot/./jb", SelfRef),
            ("zroot/jb/img@@s", MultipleAt),
            ("zroot/jb/img@a@b", MultipleAt),
            ("zroot/jb@s/x", SlashInSnapshot),
            ("zroot/jb/img@", EmptyComponent),
            ("@snap", EmptyComponent),
            ("zroot/jb/%recv", InvalidChar('%')),
            ("zroot/jb/c#1", InvalidChar('#')),
            ("zroot/jb/c\0x", InvalidChar('\0')),
            ("zroot/jb/c\n", InvalidChar('\n')),
            ("zroot/jb/cé", InvalidChar('é')),
            ("zroot/jb/img@..", ParentRef),
            ("1pool/jb", PoolNoLetter),
            (".zroot", PoolNoLetter),
            (".", SelfRef),
            ("zroot/jb/ok@.", SelfRef),
        ];
        for (name, want) in cases {
            assert_eq!(check_dataset(name).as_ref(), Err(want), "{name:?}");
        }
        assert_eq!(check_filesystem("zroot/jb@s"), Err(NotAFilesystem));
        assert_eq!(check_snapshot("zroot/jb"), Err(NotASnapshot));
        assert!(matches!(
            check_snapshot_of("zroot/jb/c1", "zroot/jb/c2@clean"),
            Err(ForeignSnapshot { .. })
        ));
    }

    #[test]
    fn length_and_depth_limits() {
        let max = format!("p/{}", "a".repeat(ZFS_MAX_DATASET_NAME_LEN - 3));
        assert_eq!(max.len(), ZFS_MAX_DATASET_NAME_LEN - 1);
        assert_eq!(check_filesystem(&max), Ok(()));
        let long = format!("{max}a");
        assert_eq!(
            check_filesystem(&long),
            Err(NameError::TooLong { len: 256 })
        );
        // The snapshot part counts towards the limit too.
        assert_eq!(
            check_snapshot(&format!("{max}@s")),
            Err(NameError::TooLong { len: 257 })
        );

        let deep = format!("p{}", "/a".repeat(MAX_NESTING));
        assert_eq!(
            check_filesystem(&deep),
            Err(NameError::TooDeep { depth: MAX_NESTING })
        );
        let ok = format!("p{}", "/a".repeat(MAX_NESTING - 1));
        assert_eq!(check_filesystem(&ok), Ok(()));
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            NameError::TooLong { len: 300 }.to_string(),
            "name is 300 bytes long, the limit is 255"
        );
        assert_eq!(
            NameError::InvalidChar('%').to_string(),
            "name contains the invalid character '%'"
        );
    }
}
