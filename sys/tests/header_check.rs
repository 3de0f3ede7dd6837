//! Compares the hand-written declarations in `src/lib.rs` with the real OpenZFS headers.
//!
//! The test parses the `extern "C"` blocks, `pub const`s and `pub type`s of `src/lib.rs`, maps
//! the Rust types to C, generates a C file that includes `<libzfs_core.h>` and `<libnvpair.h>`
//! and asserts with `_Static_assert(__builtin_types_compatible_p(...))` that every function has
//! the declared type, every constant its value and every type alias its size. It then compiles
//! that file with `cc -fsyntax-only`; any drift is a compile error and fails the test.
//!
//! `const`: a Rust `*const T` is accepted against C `const T *` or `T *` (OpenZFS 2.2 added
//! `const` to several nvpair functions that 2.1 declares without it; the ABI is the same), a
//! `*mut T` must be `T *` exactly.
//!
//! Environment:
//! - `JAILBUILDER_ZFS_INCLUDE`: colon-separated include directories
//!   (default `/usr/include/libzfs:/usr/include/libspl`, Debian's `libzfslinux-dev`);
//! - `JAILBUILDER_ZFS_CFLAGS`: extra compiler flags, whitespace-separated;
//! - `CC`: the C compiler (default `cc`);
//! - `JAILBUILDER_CI=1`: missing headers or compiler fail the test instead of skipping it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_INCLUDE: &str = "/usr/include/libzfs:/usr/include/libspl";
/// Upper bound on the `const` combinations tried for one function.
const MAX_COMBINATIONS: usize = 1 << 10;

#[derive(Debug)]
struct Function {
    name: String,
    args: Vec<String>,
    ret: Option<String>,
}

#[derive(Debug)]
struct Constant {
    name: String,
    value: String,
}

#[derive(Debug)]
struct Alias {
    name: String,
    target: String,
}

#[derive(Debug, Default)]
struct Decls {
    functions: Vec<Function>,
    constants: Vec<Constant>,
    aliases: Vec<Alias>,
}

fn strip_line_comments(src: &str) -> String {
    src.lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Splits `a: T, b: U` at top-level commas.
fn split_args(args: &str) -> Vec<String> {
    args.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            let (_, ty) = a
                .split_once(':')
                .unwrap_or_else(|| panic!("argument without a type: {a:?}"));
            ty.trim().to_string()
        })
        .collect()
}

fn parse_fn(item: &str) -> Function {
    let item = item.split_whitespace().collect::<Vec<_>>().join(" ");
    let rest = item
        .strip_prefix("pub fn ")
        .unwrap_or_else(|| panic!("unsupported item in extern block: {item:?}"));
    let open = rest.find('(').expect("fn without '('");
    let close = rest.rfind(')').expect("fn without ')'");
    let name = rest[..open].trim().to_string();
    assert!(
        !rest[open + 1..close].contains("..."),
        "{name}: variadic functions are not supported by the check"
    );
    let args = split_args(&rest[open + 1..close]);
    let tail = rest[close + 1..].trim();
    let ret = match tail.strip_prefix("->") {
        Some(r) => Some(r.trim().to_string()),
        None if tail.is_empty() => None,
        None => panic!("{name}: unexpected text after arguments: {tail:?}"),
    };
    Function { name, args, ret }
}

fn parse(src: &str) -> Decls {
    let src = strip_line_comments(src);
    let mut decls = Decls::default();

    // extern "C" { ... } blocks (no nested braces inside them).
    let mut rest = src.as_str();
    while let Some(start) = rest.find("extern \"C\"") {
        let after = &rest[start..];
        let open = after.find('{').expect("extern block without '{'");
        let close = after.find('}').expect("extern block without '}'");
        for item in after[open + 1..close].split(';') {
            if !item.trim().is_empty() {
                decls.functions.push(parse_fn(item));
            }
        }
        rest = &after[close + 1..];
    }

    // Items outside the extern blocks, one statement at a time.
    for stmt in src.split(';') {
        let stmt = stmt.split_whitespace().collect::<Vec<_>>().join(" ");
        let stmt = stmt.rsplit("*/").next().unwrap_or(&stmt).trim().to_string();
        if let Some(pos) = stmt.find("pub const ") {
            let body = &stmt[pos + "pub const ".len()..];
            let (name, rest) = body.split_once(':').expect("const without type");
            let (_, value) = rest.split_once('=').expect("const without value");
            decls.constants.push(Constant {
                name: name.trim().to_string(),
                value: value.trim().to_string(),
            });
        } else if let Some(pos) = stmt.find("pub type ") {
            let body = &stmt[pos + "pub type ".len()..];
            let (name, target) = body.split_once('=').expect("type without '='");
            decls.aliases.push(Alias {
                name: name.trim().to_string(),
                target: target.trim().to_string(),
            });
        }
    }
    decls
}

/// The C spelling of a Rust type name used in the declarations (not pointers).
fn c_base(rust: &str) -> &'static str {
    match rust {
        "c_char" => "char",
        "c_int" => "int",
        "c_uint" => "unsigned int",
        "u8" => "uint8_t",
        "i32" => "int32_t",
        "u64" => "uint64_t",
        "usize" => "size_t",
        "boolean_t" => "boolean_t",
        "uint_t" => "uint_t",
        "data_type_t" => "data_type_t",
        "zfs_sync_type_t" => "zfs_sync_type_t",
        "lzc_dataset_type" => "enum lzc_dataset_type",
        "nvlist_t" => "nvlist_t",
        "nvpair_t" => "nvpair_t",
        other => {
            panic!("Rust type {other:?} has no C mapping in tests/header_check.rs; add one there")
        }
    }
}

/// All C spellings a Rust type may have (more than one only through `*const`).
fn c_types(rust: &str) -> Vec<String> {
    let rust = rust.trim();
    if let Some(inner) = rust.strip_prefix("*const ") {
        c_types(inner)
            .into_iter()
            .flat_map(|t| [format!("{t} const *"), format!("{t} *")])
            .collect()
    } else if let Some(inner) = rust.strip_prefix("*mut ") {
        c_types(inner)
            .into_iter()
            .map(|t| format!("{t} *"))
            .collect()
    } else if rust == "()" {
        vec!["void".to_string()]
    } else {
        vec![c_base(rust).to_string()]
    }
}

fn cartesian(lists: &[Vec<String>]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = vec![Vec::new()];
    for list in lists {
        out = out
            .iter()
            .flat_map(|prefix| {
                list.iter().map(move |item| {
                    let mut v = prefix.clone();
                    v.push(item.clone());
                    v
                })
            })
            .collect();
    }
    out
}

fn rust_signature(f: &Function) -> String {
    let ret = f
        .ret
        .as_deref()
        .map(|r| format!(" -> {r}"))
        .unwrap_or_default();
    format!("fn {}({}){}", f.name, f.args.join(", "), ret)
}

fn generate_c(decls: &Decls) -> String {
    let mut c = String::from(
        "/* generated by jailbuilder-zfs-sys tests/header_check.rs */\n\
         #include <stddef.h>\n#include <stdint.h>\n\
         #include <libzfs_core.h>\n#include <libnvpair.h>\n#include <sys/fs/zfs.h>\n\n\
         #define SAME(a, b) __builtin_types_compatible_p(a, b)\n\n",
    );

    for f in &decls.functions {
        let mut lists = vec![c_types(f.ret.as_deref().unwrap_or("()"))];
        lists.extend(f.args.iter().map(|a| c_types(a)));
        let combos = cartesian(&lists);
        assert!(
            combos.len() <= MAX_COMBINATIONS,
            "{}: too many const combinations",
            f.name
        );
        let alternatives: Vec<String> = combos
            .iter()
            .map(|combo| {
                let args = if combo.len() == 1 {
                    "void".to_string()
                } else {
                    combo[1..].join(", ")
                };
                format!("SAME(__typeof__(&{}), {} (*)({}))", f.name, combo[0], args)
            })
            .collect();
        c.push_str(&format!(
            "_Static_assert({},\n    \"sys/src/lib.rs: `{}` does not match the OpenZFS header\");\n",
            alternatives.join("\n    || "),
            rust_signature(f).replace('"', "\\\"")
        ));
    }
    c.push('\n');

    for k in &decls.constants {
        c.push_str(&format!(
            "_Static_assert(({}) == ({}), \"sys/src/lib.rs: const {} = {} differs from the header\");\n",
            k.name, k.value, k.name, k.value
        ));
    }
    c.push('\n');

    for a in &decls.aliases {
        let c_name = c_base(&a.name);
        let c_target = c_types(&a.target).remove(0);
        c.push_str(&format!(
            "_Static_assert(sizeof({c_name}) == sizeof({c_target}) && _Alignof({c_name}) == _Alignof({c_target}),\n    \
             \"sys/src/lib.rs: type {} = {} differs in size or alignment from C {c_name}\");\n",
            a.name, a.target
        ));
    }
    c
}

fn lib_rs() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn ci() -> bool {
    std::env::var("JAILBUILDER_CI").is_ok_and(|v| v == "1")
}

/// Prints past the test harness's output capture, so a skip is visible in `cargo test`.
fn skip(why: &str) {
    assert!(!ci(), "{why} (JAILBUILDER_CI=1: the header check must run)");
    let _ = writeln!(std::io::stderr(), "SKIP: header_check: {why}");
}

#[test]
fn parser_sees_every_declaration() {
    let src = lib_rs();
    let decls = parse(&src);
    let fns = strip_line_comments(&src).matches("pub fn ").count();
    assert_eq!(decls.functions.len(), fns, "every `pub fn` must be parsed");
    assert!(
        decls.functions.len() >= 20,
        "suspiciously few functions: {decls:?}"
    );
    let consts = strip_line_comments(&src).matches("pub const ").count();
    assert_eq!(
        decls.constants.len(),
        consts,
        "every `pub const` must be parsed"
    );
    for f in &decls.functions {
        for a in &f.args {
            let _ = c_types(a);
        }
    }
    let clone = decls
        .functions
        .iter()
        .find(|f| f.name == "lzc_clone")
        .expect("lzc_clone");
    assert_eq!(
        clone.args,
        ["*const c_char", "*const c_char", "*mut nvlist_t"]
    );
    assert_eq!(clone.ret.as_deref(), Some("c_int"));
}

#[test]
fn declarations_match_openzfs_headers() {
    let include =
        std::env::var("JAILBUILDER_ZFS_INCLUDE").unwrap_or_else(|_| DEFAULT_INCLUDE.into());
    let dirs: Vec<PathBuf> = include
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    if !dirs.iter().any(|d| d.join("libzfs_core.h").is_file()) {
        skip(&format!(
            "libzfs_core.h not found in {include} (install libzfslinux-dev or set JAILBUILDER_ZFS_INCLUDE)"
        ));
        return;
    }

    let decls = parse(&lib_rs());
    let c = generate_c(&decls);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join("jailbuilder_zfs_sys_header_check.c");
    std::fs::write(&file, &c).expect("write generated C file");

    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let mut cmd = Command::new(&cc);
    cmd.args([
        "-std=gnu11",
        "-fsyntax-only",
        "-Werror=implicit-function-declaration",
    ]);
    for d in &dirs {
        cmd.arg("-I").arg(d);
    }
    if let Ok(extra) = std::env::var("JAILBUILDER_ZFS_CFLAGS") {
        cmd.args(extra.split_whitespace());
    }
    cmd.arg(&file);
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => {
            skip(&format!("cannot run C compiler {cc:?}: {e}"));
            return;
        }
    };
    assert!(
        out.status.success(),
        "declarations in sys/src/lib.rs drifted from the OpenZFS headers ({}):\n{}\n\
         generated file: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        file.display()
    );
}
