//! Differential test (issue 12.1): every compile the stock overlay server completes must
//! complete on `jailbuilder serve`. One corpus goes through two clusters that differ only in
//! their build server, stock `sccache-dist server` (overlay builder, bubblewrap) and
//! `jailbuilder serve`, with the same stock client; each case's outcome (exit code, stdout,
//! stderr, every file it left, the client's stats) must be the same on both, except for the
//! differences listed in [`EXPECTED_DIFFERENCES`] with their reasons.
//!
//! The corpus: C (a clean file, a compile error, warnings, `-c -o` into subdirectories,
//! includes from a sibling directory), C++, a Rust workspace of several library crates built
//! by cargo with the stock client as `RUSTC_WRAPPER` (dependency `.rlib`/`.rmeta` files cross
//! the wire), restrictive modes (a 0600 source, a 0700 include directory, umask 077 for the
//! client and the whole cargo build: 0600 metadata, stricter than the 0640 of umask 027), and
//! the compile probes of build systems (autoconf `conftest.c`, a cmake try_compile, meson
//! `-Werror` checks, kernel-style cc-option tests).
//!
//! Both clusters compile in the same absolute directory (wiped in between), so paths in
//! objects, dep-info files and messages are equal and the files compare byte for byte.
//!
//! Needs root, gcc, bubblewrap at /usr/bin/bwrap, cargo and rustc, and the stock binaries
//! (see `common::sccache`); without them it prints "SKIP: ..." and passes, unless
//! `JAILBUILDER_CI=1` (then it fails).
#![cfg(all(feature = "sccache", target_os = "linux"))]

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::sccache::{dist_compiles, prerequisites, Cluster, Proc, ServerKind};

const BWRAP: &str = "/usr/bin/bwrap";
const RUST_BUILD: &str =
    "rust: cargo build, 3 library crates, a proc-macro, a build script, a binary, umask 077";

/// Cases whose outcome may differ between the stock overlay server and `serve`, each with
/// the reason (a protection jailbuilder keeps on purpose). Everything else must match.
///
/// None of the corpus does. jailbuilder's deliberate differences are all protections no
/// stock client's compile meets, so no case here can show them (README, "Compatibility
/// with stock `sccache-dist server`"): the compile runs as the slot's unprivileged uid
/// (stock: root without capabilities), so it cannot write into the toolchain's root-owned
/// directories; device nodes other than the sandbox's own `/dev` ones, `..` entries and
/// entries through symlinks are refused in archives (stock makes devices as root and
/// skips `..`); an output must be a regular file the build user could read (stock reads
/// through symlinks inside its root, and devices); and the sandbox's limits (stock has
/// none). Cases that were stricter and are fixed: outputs through `..`, a `/dev/null`
/// input (a character-device entry), `-o /dev/null`.
const EXPECTED_DIFFERENCES: &[(&str, &str)] = &[];

/// Skips (None) or, under CI, fails, as `prerequisites` does.
fn require(test: &str, what: &str, ok: bool) -> Option<()> {
    if ok {
        return Some(());
    }
    if std::env::var("JAILBUILDER_CI").is_ok_and(|v| v == "1") {
        panic!("JAILBUILDER_CI=1 but {test} cannot run: {what}");
    }
    println!("SKIP: {test}: {what}");
    None
}

fn runs(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The real rustc (not rustup's proxy), so the client packages one sysroot.
fn real_rustc() -> Option<PathBuf> {
    let out = Command::new("rustup")
        .args(["which", "rustc"])
        .output()
        .ok();
    if let Some(o) = out.filter(|o| o.status.success()) {
        let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if p.is_file() {
            return Some(p);
        }
    }
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("bin/rustc");
    p.is_file().then_some(p)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// One step of the corpus: a command run in `cwd` (relative to the work directory), with
/// the client's umask `umask`.
struct Case {
    name: &'static str,
    cwd: &'static str,
    kind: Kind,
    umask: Option<libc::mode_t>,
    /// More environment for the client command.
    env: &'static [(&'static str, &'static str)],
}

enum Kind {
    /// `sccache <args>`.
    Sccache(Vec<String>),
    /// `cargo <args>` in the Rust workspace with the client as RUSTC_WRAPPER.
    Cargo(&'static [&'static str]),
}

fn sc(name: &'static str, cwd: &'static str, args: &str) -> Case {
    Case {
        name,
        cwd,
        kind: Kind::Sccache(args.split_whitespace().map(String::from).collect()),
        umask: None,
        env: &[],
    }
}

/// [`sc`] with the arguments as given (spaces inside one).
fn sca(name: &'static str, cwd: &'static str, args: &[&str]) -> Case {
    Case {
        kind: Kind::Sccache(args.iter().map(|a| a.to_string()).collect()),
        ..sc(name, cwd, "")
    }
}

/// What one case left behind, to compare between the two servers.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// Stat counters that changed during the case (durations left out).
    stats: BTreeMap<String, i64>,
    /// Files created or changed during the case: path -> (mode, contents).
    files: BTreeMap<String, (u32, Vec<u8>)>,
}

impl Outcome {
    fn row(&self) -> String {
        let stats: Vec<String> = self.stats.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let files: Vec<String> = self
            .files
            .iter()
            .map(|(p, (m, d))| format!("{p}({m:o},{}B)", d.len()))
            .collect();
        format!(
            "exit {:?} | {} | files: {}",
            self.code,
            stats.join(" "),
            if files.len() > 6 {
                format!("{} files", files.len())
            } else {
                files.join(" ")
            }
        )
    }
}

/// The corpus's source tree, written into `work` (modes set explicitly where they matter).
fn write_corpus(work: &Path) {
    let w = |rel: &str, text: &str, mode: u32| {
        let p = work.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    let d = |rel: &str, mode: u32| {
        let p = work.join(rel);
        fs::create_dir_all(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    // C.
    w(
        "c/ok.c",
        "#include <stdio.h>\nint answer(void) { return 42; }\n\
         int main(void) { printf(\"%d\\n\", answer()); return 0; }\n",
        0o644,
    );
    w(
        "c/bad.c",
        "int broken(void) { return undeclared_thing; }\n",
        0o644,
    );
    w(
        "c/warn.c",
        "int f(int x) { int unused; switch (x) { case 1: x++; case 2: return x; } return 0; }\n",
        0o644,
    );
    d("c/out/sub", 0o755);
    d("c/obj/deep", 0o755);
    w(
        "c/include/shape.h",
        "#ifndef SHAPE_H\n#define SHAPE_H\nstruct shape { int w, h; };\n\
         int area(const struct shape *s);\n#endif\n",
        0o644,
    );
    w(
        "c/src/shape.c",
        "#include \"shape.h\"\n#include \"local.h\"\n\
         int area(const struct shape *s) { return s->w * s->h * LOCAL_SCALE; }\n",
        0o644,
    );
    w("c/src/local.h", "#define LOCAL_SCALE 1\n", 0o644);
    w(
        "c/dir with space/caf\u{e9}.c",
        "int cafe(void) { return 0xcafe; }\n",
        0o644,
    );
    // Restrictive modes: a 0600 source, a 0700 include directory with a 0600 header.
    w(
        "c/secret.c",
        "static const char key[] = \"not for others\";\nconst char *get_key(void) { return key; }\n",
        0o600,
    );
    w("c/private/priv.h", "#define PRIVATE_VALUE 7\n", 0o600);
    d("c/private", 0o700);
    w(
        "c/usepriv.c",
        "#include \"priv.h\"\nint private_value(void) { return PRIVATE_VALUE; }\n",
        0o644,
    );
    // Written as under umask 077: every file 0600, every directory 0700.
    w("c/umask/inc/u.h", "#define U_VALUE 3\n", 0o600);
    w(
        "c/umask/u.c",
        "#include \"u.h\"\nint u_value(void) { return U_VALUE; }\n",
        0o600,
    );
    d("c/umask/inc", 0o700);
    d("c/umask/obj", 0o700);
    d("c/umask", 0o700);
    // C++.
    w(
        "cxx/hello.cpp",
        "#include <string>\n#include <vector>\n#include <numeric>\n\
         std::string greet(const std::vector<std::string> &names) {\n\
           return std::accumulate(names.begin(), names.end(), std::string(\"hello\"),\n\
             [](std::string a, const std::string &b) { return a + \" \" + b; });\n}\n",
        0o644,
    );
    w(
        "cxx/bad.cpp",
        "#include <vector>\nint f() { std::vector<int> v; return v.no_such_member(); }\n",
        0o644,
    );
    // Build-system probes.
    w(
        "probe/conftest.c",
        "/* confdefs.h */\n#define PACKAGE_NAME \"x\"\n#include <stdio.h>\n\
         int main (void) { return 0; }\n",
        0o644,
    );
    w(
        "probe/conftest_fail.c",
        "#include <no_such_header_for_configure.h>\nint main (void) { return 0; }\n",
        0o644,
    );
    w(
        "probe/cmake/CMakeFiles/CMakeScratch/TryCompile-x1/src.c",
        "#include <stdint.h>\nint main(void) { return (int)sizeof(uint64_t) - 8; }\n",
        0o644,
    );
    d(
        "probe/cmake/CMakeFiles/CMakeScratch/TryCompile-x1/CMakeFiles/cmTC_1.dir",
        0o755,
    );
    w(
        "probe/meson/testfile.c",
        "int main(void) { int x = 0; return x; }\n",
        0o644,
    );
    w(
        "probe/meson/unused.c",
        "int main(void) { int unused_variable; return 0; }\n",
        0o644,
    );
    // A Rust workspace: alpha <- beta <- gamma <- app (a binary), gamma also uses alpha. Each
    // library crate uses its dependency's generics and macros, so the compile needs the
    // dependency's metadata (.rmeta/.rlib), sent as inputs.
    w(
        "rust/Cargo.toml",
        "[workspace]\n\
         members = [\"alpha\", \"beta\", \"gamma\", \"namer\", \"app\", \"broken\"]\n\
         default-members = [\"alpha\", \"beta\", \"gamma\", \"namer\", \"app\"]\n\
         resolver = \"2\"\n",
        0o644,
    );
    let krate = |name: &str, deps: &[&str], lib: &str| {
        let mut toml = format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n"
        );
        for dep in deps {
            let _ = writeln!(toml, "{dep} = {{ path = \"../{dep}\" }}");
        }
        w(&format!("rust/{name}/Cargo.toml"), &toml, 0o644);
        w(&format!("rust/{name}/src/lib.rs"), lib, 0o644);
    };
    krate(
        "alpha",
        &[],
        "#[macro_export]\nmacro_rules! twice { ($e:expr) => { $e * 2 } }\n\
         pub fn sum<T: std::iter::Sum<T>, I: IntoIterator<Item = T>>(i: I) -> T { i.into_iter().sum() }\n\
         pub struct Counter { pub n: u64 }\n\
         impl Counter { pub fn bump(&mut self) -> u64 { self.n += 1; self.n } }\n",
    );
    // beta also includes code its build script generates into OUT_DIR (written under the
    // build's umask 077, so 0600) and a data file from outside its own directory.
    krate(
        "beta",
        &["alpha"],
        "pub fn doubled_sum(v: &[u32]) -> u32 { alpha::twice!(alpha::sum(v.iter().copied())) }\n\
         pub fn counter() -> alpha::Counter { alpha::Counter { n: 0 } }\n\
         include!(concat!(env!(\"OUT_DIR\"), \"/generated.rs\"));\n\
         pub const NOTE: &str = include_str!(\"../../shared/note.txt\");\n",
    );
    w(
        "rust/beta/build.rs",
        "fn main() {\n\
           let out = std::env::var(\"OUT_DIR\").unwrap();\n\
           std::fs::write(format!(\"{out}/generated.rs\"), \"pub const GENERATED: u32 = 5;\\n\").unwrap();\n\
         }\n",
        0o644,
    );
    w(
        "rust/shared/note.txt",
        "a note, readable by its owner only\n",
        0o600,
    );
    krate(
        "gamma",
        &["alpha", "beta", "namer"],
        "#[derive(namer::Named)]\npub struct Thing;\n\
         pub fn report() -> String {\n\
           let mut c = beta::counter();\n\
           c.bump();\n\
           format!(\"{} {} {}\", beta::doubled_sum(&[1, 2, 3]), alpha::twice!(c.bump()), Thing::name())\n}\n",
    );
    // A proc-macro crate (compiled locally: sccache does not cache it): gamma's compile
    // sends its shared object as an input, and the server's rustc loads it.
    w(
        "rust/namer/Cargo.toml",
        "[package]\nname = \"namer\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [lib]\nproc-macro = true\n",
        0o644,
    );
    w(
        "rust/namer/src/lib.rs",
        "use proc_macro::{TokenStream, TokenTree};\n\
         #[proc_macro_derive(Named)]\n\
         pub fn named(input: TokenStream) -> TokenStream {\n\
           let mut it = input.into_iter();\n\
           let mut name = String::new();\n\
           while let Some(t) = it.next() {\n\
             if matches!(&t, TokenTree::Ident(i) if i.to_string() == \"struct\") {\n\
               if let Some(TokenTree::Ident(n)) = it.next() { name = n.to_string(); }\n\
               break;\n\
             }\n\
           }\n\
           format!(\"impl {name} {{ pub fn name() -> &'static str {{ \\\"{name}\\\" }} }}\").parse().unwrap()\n\
         }\n",
        0o644,
    );
    krate(
        "broken",
        &["alpha"],
        "pub fn wrong() -> u32 { alpha::Counter { n: 1 } }\n",
    );
    w(
        "rust/app/Cargo.toml",
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [dependencies]\ngamma = { path = \"../gamma\" }\n",
        0o644,
    );
    w(
        "rust/app/src/main.rs",
        "fn main() { println!(\"{}\", gamma::report()); }\n",
        0o644,
    );
}

fn corpus(cxx: bool) -> Vec<Case> {
    let mut v = vec![
        sc("c: clean compile", "c", "gcc -O2 -Wall -c ok.c -o ok.o"),
        sc("c: compile error", "c", "gcc -c bad.c -o bad.o"),
        // A user's UTF-8 locale: both servers must give the same messages (both give the C
        // locale's ASCII quotes, where a local compile gives typographic ones: sccache's
        // packaged gcc toolchain holds no locale files).
        Case {
            env: &[("LC_ALL", "C.UTF-8")],
            ..sc(
                "c: compile error, LC_ALL=C.UTF-8",
                "c",
                "gcc -c bad.c -o bad.o",
            )
        },
        sc("c: warnings", "c", "gcc -Wall -Wextra -c warn.c -o warn.o"),
        sc(
            "c: -c -o into a subdirectory",
            "c",
            "gcc -O1 -c ok.c -o out/sub/ok.o",
        ),
        sc(
            "c: -MD -MF dependency file beside the object",
            "c",
            "gcc -MD -MT out/sub/dep.o -MF out/sub/dep.o.d -c ok.c -o out/sub/dep.o",
        ),
        sc(
            "c: sibling include dir, output in ../obj/deep",
            "c/src",
            "gcc -I../include -c shape.c -o ../obj/deep/shape.o",
        ),
        // A fixed -frandom-seed: gcc otherwise stamps .gcno and object with the time.
        sc(
            "c: --coverage (.gcno beside the object)",
            "c",
            "gcc --coverage -frandom-seed=cov -c ok.c -o out/cov.o",
        ),
        sc(
            "c: -gsplit-dwarf (.dwo beside the object)",
            "c",
            "gcc -g -gsplit-dwarf -c ok.c -o out/split.o",
        ),
        sc(
            "c: absolute source and output paths",
            "probe",
            "gcc -DABSOLUTE -c {work}/c/ok.c -o {work}/c/out/abs.o",
        ),
        sca(
            "c: spaces and non-ASCII in names",
            "c",
            &[
                "gcc",
                "-c",
                "dir with space/caf\u{e9}.c",
                "-o",
                "dir with space/caf\u{e9}.o",
            ],
        ),
        sc("c: 0600 source", "c", "gcc -c secret.c -o secret.o"),
        sc(
            "c: 0700 include dir, 0600 header",
            "c",
            "gcc -Iprivate -c usepriv.c -o usepriv.o",
        ),
        Case {
            umask: Some(0o077),
            ..sc(
                "c: umask 077 tree and client",
                "c/umask",
                "gcc -Iinc -c u.c -o obj/u.o",
            )
        },
    ];
    if cxx {
        v.extend([
            sc(
                "c++: clean compile",
                "cxx",
                "g++ -O2 -std=c++17 -c hello.cpp -o hello.o",
            ),
            sc("c++: compile error", "cxx", "g++ -c bad.cpp -o bad.o"),
        ]);
    }
    v.extend([
        sc(
            "autoconf: conftest compiles",
            "probe",
            "gcc -c -g -O2 conftest.c -o conftest.o",
        ),
        sc(
            "autoconf: conftest fails (missing header)",
            "probe",
            "gcc -c -g -O2 conftest_fail.c -o conftest_fail.o",
        ),
        sc(
            "cmake: try_compile",
            "probe/cmake/CMakeFiles/CMakeScratch/TryCompile-x1",
            "gcc -O3 -DNDEBUG -o CMakeFiles/cmTC_1.dir/src.c.o -c src.c",
        ),
        sc(
            "meson: -Werror check passes",
            "probe/meson",
            "gcc testfile.c -o output.obj -c -O0 -Werror=implicit-function-declaration -Wunused-variable -Werror",
        ),
        sc(
            "meson: -Werror check fails",
            "probe/meson",
            "gcc unused.c -o unused.obj -c -O0 -Wunused-variable -Werror",
        ),
        sc(
            "kernel: cc-option supported, /dev/null -> file",
            "probe",
            "gcc -Werror -fno-stack-protector -c -x c /dev/null -o .cc-option.o",
        ),
        sc(
            "kernel: cc-option unsupported",
            "probe",
            "gcc -Werror -fno-such-option-at-all -c -x c /dev/null -o .cc-option-bad.o",
        ),
        sc(
            "kernel: cc-option, -o /dev/null",
            "probe",
            "gcc -Werror -fno-PIE -c -x c /dev/null -o /dev/null",
        ),
        Case {
            name: RUST_BUILD,
            cwd: "rust",
            kind: Kind::Cargo(&["build"]),
            umask: Some(0o077),
            env: &[],
        },
        Case {
            name: "rust: a crate that does not compile",
            cwd: "rust",
            kind: Kind::Cargo(&["build", "-p", "broken"]),
            umask: Some(0o077),
            env: &[],
        },
    ]);
    v
}

/// Every regular file beneath `dir`: path relative to `dir` -> (mode, contents).
fn snapshot(dir: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                walk(base, &p, out);
            } else if md.is_file() {
                let rel = p.strip_prefix(base).unwrap().display().to_string();
                out.insert(
                    rel,
                    (md.permissions().mode() & 0o7777, fs::read(&p).unwrap()),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// cargo's own bookkeeping (fingerprints, its lock, the rustc probe cache): written by
/// cargo on the client, never by a build server.
fn cargo_bookkeeping(path: &str) -> bool {
    path.contains("/.fingerprint/")
        || path.ends_with(".cargo-lock")
        || path.ends_with(".rustc_info.json")
        || path.ends_with("CACHEDIR.TAG")
}

/// The stats' counters, flattened (`cache_hits.counts.C/C++`, ...): `dist_compiles`
/// summed over servers (their ports differ), durations dropped.
fn counters(stats: &serde_json::Value) -> BTreeMap<String, i64> {
    fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, i64>) {
        match v {
            serde_json::Value::Number(n) => {
                out.insert(prefix.to_string(), n.as_i64().unwrap_or(0));
            }
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k.contains("duration") || (prefix.is_empty() && k == "dist_compiles") {
                        continue;
                    }
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    flatten("", stats, &mut out);
    out.insert("dist_compiles".into(), dist_compiles(stats) as i64);
    out
}

fn delta(before: &BTreeMap<String, i64>, after: &BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d != 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// The client's counters once they stop changing: the client writes its cache entry after
/// it has answered the compile, so a case's `cache_writes` may land a moment later.
fn settled(client: &common::sccache::Client) -> BTreeMap<String, i64> {
    let mut last = counters(&client.stats());
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = counters(&client.stats());
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the client's stats kept changing: {last:?}");
}

/// Sets the child's umask.
fn with_umask(cmd: &mut Command, mask: Option<libc::mode_t>) {
    if let Some(mask) = mask {
        // SAFETY: umask(2) is async-signal-safe and touches nothing but the child's mask.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(mask);
                Ok(())
            });
        }
    }
}

/// The corpus run through one cluster: each case's outcome, in corpus order.
struct Run {
    outcomes: Vec<Outcome>,
    /// Seconds each case took (reported, never compared).
    case_secs: Vec<f64>,
    server_log: String,
    secs: f64,
}

fn run_corpus(
    bin: &Path,
    kind: ServerKind,
    work: &Path,
    dist_cache: &Path,
    rustc: &Path,
    cases: &[Case],
) -> Run {
    let started = Instant::now();
    if work.exists() {
        fs::remove_dir_all(work).unwrap();
    }
    fs::create_dir_all(work).unwrap();
    write_corpus(work);

    let mut cluster = Cluster::start_with(bin, kind);
    // The client server again, with umask 077 (it writes the objects the servers return,
    // and so the modes of the .rmeta/.rlib files later compiles send), and a toolchain
    // cache shared by both runs (the Rust sysroot is packaged once).
    fs::write(
        cluster.dir().join("client.toml"),
        fs::read_to_string(cluster.dir().join("client.toml"))
            .unwrap()
            .replace(
                &format!(
                    "cache_dir = \"{}\"",
                    cluster.dir().join("dist-client").display()
                ),
                &format!("cache_dir = \"{}\"", dist_cache.display()),
            ),
    )
    .unwrap();
    cluster.client_server.terminate();
    let mut cmd = cluster.client.command(&[]);
    cmd.env("SCCACHE_START_SERVER", "1")
        .env("SCCACHE_NO_DAEMON", "1")
        .env("SCCACHE_LOG", "info");
    with_umask(&mut cmd, Some(0o077));
    cluster.client_server = Proc::spawn(
        "sccache-server",
        &mut cmd,
        cluster.dir(),
        Duration::from_secs(5),
    );
    let port: u16 = cluster
        .client
        .env
        .iter()
        .find(|(k, _)| *k == "SCCACHE_SERVER_PORT")
        .unwrap()
        .1
        .parse()
        .unwrap();
    common::sccache::wait_for("the sccache client server", Duration::from_secs(20), || {
        common::sccache::port_open(port)
    });

    let server_key = cluster.server_key();
    let cluster_dir = cluster.dir().display().to_string();
    let normalise = |s: &[u8]| {
        String::from_utf8_lossy(s)
            .replace(&server_key, "<server>")
            .replace(&cluster_dir, "<cluster>")
    };
    let mut outcomes = Vec::new();
    let mut case_secs = Vec::new();
    let mut stats = counters(&cluster.client.stats());
    let mut files = snapshot(work);
    for case in cases {
        let cwd = work.join(case.cwd);
        let case_started = Instant::now();
        let out: Output = match &case.kind {
            Kind::Sccache(args) => {
                // `{work}`: the work directory, the same absolute path in both runs.
                let work_s = work.display().to_string();
                let args: Vec<String> = args.iter().map(|a| a.replace("{work}", &work_s)).collect();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut cmd = cluster.client.command(&args);
                cmd.current_dir(&cwd);
                with_umask(&mut cmd, case.umask);
                cmd.envs(case.env.iter().copied());
                cmd.output().unwrap()
            }
            Kind::Cargo(cargo_args) => {
                let mut cmd = Command::new(cargo());
                for (k, _) in std::env::vars_os() {
                    let k = k.to_string_lossy().into_owned();
                    if k.starts_with("SCCACHE_") || k.starts_with("CARGO_") || k.starts_with("RUST")
                    {
                        cmd.env_remove(k);
                    }
                }
                for (k, v) in &cluster.client.env {
                    cmd.env(k, v);
                }
                cmd.args(*cargo_args)
                    .args(["--offline", "--quiet", "--jobs", "2"])
                    .current_dir(&cwd)
                    .env("RUSTC_WRAPPER", &cluster.client.bin)
                    .env("RUSTC", rustc)
                    .env("CARGO_INCREMENTAL", "0")
                    .env("CARGO_TARGET_DIR", cwd.join("target"))
                    .env("CARGO_TERM_COLOR", "never");
                with_umask(&mut cmd, case.umask);
                cmd.output().unwrap()
            }
        };
        case_secs.push(case_started.elapsed().as_secs_f64());
        let after = settled(&cluster.client);
        let now = snapshot(work);
        let changed = now
            .iter()
            .filter(|(p, v)| files.get(*p) != Some(v) && !cargo_bookkeeping(p))
            .map(|(p, v)| (p.clone(), v.clone()))
            .collect();
        outcomes.push(Outcome {
            code: out.status.code(),
            stdout: normalise(&out.stdout),
            stderr: normalise(&out.stderr),
            stats: delta(&stats, &after),
            files: changed,
        });
        stats = after;
        files = now;
    }
    let server_log = cluster.serve.log();
    drop(cluster);
    Run {
        outcomes,
        case_secs,
        server_log,
        secs: started.elapsed().as_secs_f64(),
    }
}

#[test]
fn stock_and_jailbuilder_agree_on_one_corpus() {
    const TEST: &str = "sccache_differential";
    let Some(bin) = prerequisites(TEST) else {
        return;
    };
    if require(
        TEST,
        "bubblewrap missing (/usr/bin/bwrap): apt-get install bubblewrap",
        runs(BWRAP, &["--version"]),
    )
    .is_none()
    {
        return;
    }
    let rustc = real_rustc();
    if require(
        TEST,
        "cargo and rustc needed",
        rustc.is_some() && runs(&cargo(), &["--version"]),
    )
    .is_none()
    {
        return;
    }
    let rustc = rustc.unwrap();
    let cxx = runs("g++", &["--version"]);
    if !cxx {
        // .ci/setup-debian installs g++ (build-essential): in CI its absence is a failure.
        assert!(
            std::env::var("JAILBUILDER_CI").as_deref() != Ok("1"),
            "JAILBUILDER_CI=1 but g++ is not installed: the C++ cases cannot run"
        );
        println!("{TEST}: g++ not installed: the C++ cases are left out");
    }
    let started = Instant::now();
    let cases = corpus(cxx);
    let top = tempfile::Builder::new()
        .prefix("jb-differential")
        .tempdir()
        .unwrap();
    let work = top.path().join("work");
    let dist_cache = top.path().join("dist-client");

    let stock = run_corpus(
        &bin,
        ServerKind::StockOverlay,
        &work,
        &dist_cache,
        &rustc,
        &cases,
    );
    let jail = run_corpus(
        &bin,
        ServerKind::Jailbuilder("shutdown_grace_secs = 10\nmax_containers = 2\n"),
        &work,
        &dist_cache,
        &rustc,
        &cases,
    );

    let mut table = String::new();
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let (s, j) = (&stock.outcomes[i], &jail.outcomes[i]);
        let _ = writeln!(
            table,
            "{}\n  stock ({:.1}s): {}\n  jail  ({:.1}s): {}",
            case.name,
            stock.case_secs[i],
            s.row(),
            jail.case_secs[i],
            j.row()
        );
        let expected = EXPECTED_DIFFERENCES.iter().find(|(n, _)| *n == case.name);
        // No case may fall back to a local compile on either server.
        for (who, o) in [("stock", s), ("jailbuilder", j)] {
            if o.stats.get("dist_errors").copied().unwrap_or(0) != 0 {
                failures.push(format!("{}: dist errors on {who}: {o:?}", case.name));
            }
        }
        if s != j && expected.is_none() {
            let mut why = format!("{}: outcomes differ\n", case.name);
            if s.code != j.code {
                let _ = writeln!(why, "  exit: stock {:?}, jailbuilder {:?}", s.code, j.code);
            }
            if s.stats != j.stats {
                let _ = writeln!(
                    why,
                    "  stats: stock {:?}\n         jail  {:?}",
                    s.stats, j.stats
                );
            }
            if s.stderr != j.stderr {
                let _ = writeln!(
                    why,
                    "  stderr: stock\n{}\n  jailbuilder\n{}",
                    s.stderr, j.stderr
                );
            }
            if s.stdout != j.stdout {
                let _ = writeln!(why, "  stdout: stock {:?}, jail {:?}", s.stdout, j.stdout);
            }
            for p in s.files.keys().chain(j.files.keys()) {
                if s.files.get(p) != j.files.get(p) {
                    let _ = writeln!(
                        why,
                        "  file {p}: stock {:?}, jailbuilder {:?}",
                        s.files.get(p).map(|(m, d)| (format!("{m:o}"), d.len())),
                        j.files.get(p).map(|(m, d)| (format!("{m:o}"), d.len()))
                    );
                }
            }
            failures.push(why);
        }
    }
    eprintln!("{table}");
    eprintln!(
        "{TEST}: stock run {:.1}s, jailbuilder run {:.1}s, total {:.1}s",
        stock.secs,
        jail.secs,
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{}\n---- stock server log (tail) ----\n{}\n---- serve log (tail) ----\n{}",
        failures.join("\n"),
        tail(&stock.server_log, 40),
        tail(&jail.server_log, 40)
    );

    // The program built from the distributed crates (the last run's, still in `work`) runs.
    let app = Command::new(work.join("rust/target/debug/app"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&app.stdout),
        "12 4 Thing\n",
        "{app:?}"
    );

    // The corpus exercised what it is for, on both servers: C compiles distributed, compile
    // errors from the server, and the dependent Rust crates distributed with their
    // dependencies' metadata as inputs.
    let find = |name: &str| cases.iter().position(|c| c.name == name).unwrap();
    let dist = |o: &Outcome| o.stats.get("dist_compiles").copied().unwrap_or(0);
    for run in [&stock, &jail] {
        assert_eq!(dist(&run.outcomes[find("c: clean compile")]), 1);
        assert_eq!(run.outcomes[find("c: compile error")].code, Some(1));
        assert_eq!(dist(&run.outcomes[find("c: compile error")]), 1);
        assert_eq!(dist(&run.outcomes[find("c: 0600 source")]), 1);
        let rust = &run.outcomes[find(RUST_BUILD)];
        assert_eq!(rust.code, Some(0), "{}", rust.stderr);
        assert_eq!(
            dist(rust),
            3,
            "the library crates were distributed: {rust:?}"
        );
        // Under umask 077 the client wrote alpha's metadata 0600: beta and gamma were
        // compiled from 0600 .rmeta/.rlib inputs (issue 12.1's E0786).
        let rmeta: Vec<u32> = rust
            .files
            .iter()
            .filter(|(p, _)| p.contains("/deps/libalpha-") && p.ends_with(".rmeta"))
            .map(|(_, (mode, _))| *mode)
            .collect();
        assert_eq!(
            rmeta,
            [0o600],
            "{:?}",
            rust.files.keys().collect::<Vec<_>>()
        );
        let broken = &run.outcomes[find("rust: a crate that does not compile")];
        assert_eq!(broken.code, Some(101), "{}", broken.stderr);
        assert!(broken.stderr.contains("error[E0308]"), "{}", broken.stderr);
        assert_eq!(dist(broken), 1, "{broken:?}");
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
