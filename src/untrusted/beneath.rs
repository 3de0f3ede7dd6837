//! Path resolution beneath a root directory descriptor, component by component.
use std::path::Path;

use crate::backend::BuildUser;

#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    #[error("stub")]
    Stub,
}

/// An open root directory.
pub struct RootDir;

impl RootDir {
    pub fn open(_p: &Path) -> Result<RootDir, BeneathError> {
        Err(BeneathError::Stub)
    }
}

pub fn make_dirs_beneath(
    _root: &RootDir,
    _rel: &str,
    _owner: Option<BuildUser>,
) -> Result<(), BeneathError> {
    Err(BeneathError::Stub)
}

pub fn read_file_beneath(_root: &RootDir, _rel: &str, _cap: u64) -> Result<Vec<u8>, BeneathError> {
    Err(BeneathError::Stub)
}
