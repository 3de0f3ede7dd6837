//! `jailbuilder toolchain`: package a host compiler.

use std::path::PathBuf;

use anyhow::Context;
use jailbuilder::toolchain::{package, PackageOptions};

#[derive(clap::Args, Debug)]
pub struct ToolchainArgs {
    /// Compiler to package: a name in PATH or a path.
    #[arg(long, default_value = "cc")]
    pub compiler: String,
    /// Where to write the archive (gzip'd tar).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Leave out the system header directories (enough for sccache, which sends
    /// preprocessed input; not for `jailbuilder run` on sources that include <stdio.h>).
    #[arg(long)]
    pub no_headers: bool,
    /// More files or directories to include, at their host paths.
    #[arg(long, value_name = "PATH")]
    pub extra: Vec<PathBuf>,
}

pub fn run(args: ToolchainArgs) -> anyhow::Result<std::process::ExitCode> {
    let tmp = args.output.with_extension("partial");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let opts = PackageOptions {
        compiler: args.compiler.clone(),
        headers: !args.no_headers,
        extra: args.extra,
    };
    let summary = match package(&opts, &mut file) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
    };
    drop(file);
    std::fs::rename(&tmp, &args.output)?;
    let size = std::fs::metadata(&args.output)?.len();
    println!(
        "{}: {} ({} files, {} symlinks, {:.1} MiB unpacked, {:.1} MiB compressed)",
        args.output.display(),
        summary.compiler.display(),
        summary.files,
        summary.symlinks,
        summary.bytes as f64 / (1 << 20) as f64,
        size as f64 / (1 << 20) as f64
    );
    Ok(std::process::ExitCode::SUCCESS)
}
