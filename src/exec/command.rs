//! Validation of a client's compile command into the C strings execve(2) needs.
//!
//! Everything is allocated and checked here, before fork, so that the child between fork
//! and exec only reads prepared memory.

use std::ffi::{CStr, CString};
use std::os::raw::c_char;

/// A command as a client sends it (sccache's `CompileCommand`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandSpec {
    /// Absolute path of the program inside the sandbox.
    pub executable: String,
    /// Arguments after `argv[0]`; `argv[0]` is the executable.
    pub arguments: Vec<String>,
    pub env_vars: Vec<(String, String)>,
    /// Absolute working directory inside the sandbox.
    pub cwd: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidCommand {
    #[error("executable {0:?} is not an absolute path")]
    RelativeExecutable(String),
    #[error("working directory {0:?} is not an absolute path without '..'")]
    BadCwd(String),
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    #[error("environment variable name {0:?} is empty or contains '='")]
    BadEnvName(String),
    #[error("too many arguments or environment variables ({0})")]
    TooMany(usize),
}

/// Most argv + envp entries accepted; the kernel's ARG_MAX bounds the bytes anyway.
const MAX_STRINGS: usize = 65_536;

/// A validated command, ready for execve(2) in a forked child.
pub struct PreparedCommand {
    executable: CString,
    cwd: CString,
    // Owners of the bytes the pointer arrays point into. Moving a CString does not move its
    // heap buffer, so the pointers stay valid for the life of this struct.
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    envp_ptrs: Vec<*const c_char>,
    spec: CommandSpec,
}

// SAFETY: the raw pointers point into CStrings owned by the same struct, which are never
// mutated after construction; sharing or sending the struct shares read-only memory.
unsafe impl Send for PreparedCommand {}
// SAFETY: as for Send: all access through &self is read-only.
unsafe impl Sync for PreparedCommand {}

fn cstring(s: &str, what: &'static str) -> Result<CString, InvalidCommand> {
    CString::new(s).map_err(|_| InvalidCommand::Nul { what })
}

/// An absolute path with no `..` component (`.` and repeated `/` are tolerated).
pub(crate) fn is_clean_absolute(path: &str) -> bool {
    path.starts_with('/') && !path.split('/').any(|c| c == "..")
}

impl PreparedCommand {
    pub fn new(spec: CommandSpec) -> Result<Self, InvalidCommand> {
        if !spec.executable.starts_with('/') {
            return Err(InvalidCommand::RelativeExecutable(spec.executable));
        }
        if !is_clean_absolute(&spec.cwd) {
            return Err(InvalidCommand::BadCwd(spec.cwd));
        }
        let count = 1 + spec.arguments.len() + spec.env_vars.len();
        if count > MAX_STRINGS {
            return Err(InvalidCommand::TooMany(count));
        }
        let executable = cstring(&spec.executable, "executable")?;
        let cwd = cstring(&spec.cwd, "working directory")?;
        let mut argv = Vec::with_capacity(1 + spec.arguments.len());
        argv.push(executable.clone());
        for a in &spec.arguments {
            argv.push(cstring(a, "an argument")?);
        }
        let mut envp = Vec::with_capacity(spec.env_vars.len());
        for (k, v) in &spec.env_vars {
            if k.is_empty() || k.contains('=') {
                return Err(InvalidCommand::BadEnvName(k.clone()));
            }
            envp.push(cstring(&format!("{k}={v}"), "an environment variable")?);
        }
        let argv_ptrs = argv
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp_ptrs = envp
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        Ok(PreparedCommand {
            executable,
            cwd,
            _argv: argv,
            _envp: envp,
            argv_ptrs,
            envp_ptrs,
            spec,
        })
    }

    pub fn spec(&self) -> &CommandSpec {
        &self.spec
    }

    pub fn executable(&self) -> &CStr {
        &self.executable
    }

    pub fn cwd(&self) -> &CStr {
        &self.cwd
    }

    /// NULL-terminated argv for execve(2); valid while `self` lives.
    pub(crate) fn argv_ptr(&self) -> *const *const c_char {
        self.argv_ptrs.as_ptr()
    }

    /// NULL-terminated envp for execve(2); valid while `self` lives.
    pub(crate) fn envp_ptr(&self) -> *const *const c_char {
        self.envp_ptrs.as_ptr()
    }
}

impl TryFrom<CommandSpec> for PreparedCommand {
    type Error = InvalidCommand;

    fn try_from(spec: CommandSpec) -> Result<Self, InvalidCommand> {
        PreparedCommand::new(spec)
    }
}

impl std::fmt::Debug for PreparedCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.spec.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CommandSpec {
        CommandSpec {
            executable: "/usr/bin/cc".into(),
            arguments: vec!["-c".into(), "a.c".into()],
            env_vars: vec![("LANG".into(), "C".into())],
            cwd: "/work".into(),
        }
    }

    #[test]
    fn prepares_null_terminated_arrays() {
        let p = PreparedCommand::new(spec()).unwrap();
        assert_eq!(p.argv_ptrs.len(), 4);
        assert!(p.argv_ptrs[3].is_null());
        // SAFETY: pointers come from live CStrings owned by `p`.
        let a1 = unsafe { CStr::from_ptr(p.argv_ptrs[1]) };
        assert_eq!(a1.to_str().unwrap(), "-c");
        // SAFETY: as above.
        let e0 = unsafe { CStr::from_ptr(p.envp_ptrs[0]) };
        assert_eq!(e0.to_str().unwrap(), "LANG=C");
        assert!(p.envp_ptrs[1].is_null());
    }

    #[test]
    fn rejects_hostile_commands() {
        let cases: Vec<(CommandSpec, InvalidCommand)> = vec![
            (
                CommandSpec {
                    executable: "cc".into(),
                    ..spec()
                },
                InvalidCommand::RelativeExecutable("cc".into()),
            ),
            (
                CommandSpec {
                    cwd: "/work/../../etc".into(),
                    ..spec()
                },
                InvalidCommand::BadCwd("/work/../../etc".into()),
            ),
            (
                CommandSpec {
                    cwd: "work".into(),
                    ..spec()
                },
                InvalidCommand::BadCwd("work".into()),
            ),
            (
                CommandSpec {
                    arguments: vec!["a\0b".into()],
                    ..spec()
                },
                InvalidCommand::Nul {
                    what: "an argument",
                },
            ),
            (
                CommandSpec {
                    env_vars: vec![("A=B".into(), "x".into())],
                    ..spec()
                },
                InvalidCommand::BadEnvName("A=B".into()),
            ),
            (
                CommandSpec {
                    env_vars: vec![("".into(), "x".into())],
                    ..spec()
                },
                InvalidCommand::BadEnvName("".into()),
            ),
            (
                CommandSpec {
                    env_vars: vec![("K\0".into(), "x".into())],
                    ..spec()
                },
                InvalidCommand::Nul {
                    what: "an environment variable",
                },
            ),
            (
                CommandSpec {
                    executable: "/bin/c\0c".into(),
                    ..spec()
                },
                InvalidCommand::Nul { what: "executable" },
            ),
        ];
        for (s, want) in cases {
            assert_eq!(PreparedCommand::new(s).unwrap_err(), want);
        }
    }
}
