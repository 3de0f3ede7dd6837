//! Helpers shared by the unit tests of several modules.

/// Whether a test that needs root should skip here: prints `SKIP(what): needs root:
/// because` and returns true when not root. CI runs as root and sets JAILBUILDER_CI, so
/// there a missing root fails the test instead of skipping it.
pub(crate) fn skip_unless_root(what: &str, because: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return false;
    }
    assert!(
        std::env::var_os("JAILBUILDER_CI").is_none(),
        "{what} needs root (JAILBUILDER_CI=1 forbids skipping)"
    );
    println!("SKIP({what}): needs root: {because}");
    true
}
