//! Safe unpacking of untrusted tar archives beneath a root.
use std::io::Read;

use super::RootDir;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("stub")]
    Stub,
}

#[derive(Clone, Debug)]
pub struct UnpackLimits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

#[derive(Clone, Debug, Default)]
pub struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
}

pub fn unpack_tar(
    _r: &mut dyn Read,
    _root: &RootDir,
    _l: &UnpackLimits,
) -> Result<UnpackStats, UnpackError> {
    Err(UnpackError::Stub)
}

pub fn unpack_tar_gz(
    _r: &mut dyn Read,
    _root: &RootDir,
    _l: &UnpackLimits,
) -> Result<UnpackStats, UnpackError> {
    Err(UnpackError::Stub)
}
