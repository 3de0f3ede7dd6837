//! Command-line interface (binary only; anyhow lives here, not in the library).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(feature = "sccache")]
mod serve;

#[derive(Parser)]
#[command(name = "jailbuilder", version, about = "Spawn-free build sandboxes for sccache-dist: FreeBSD jails + ZFS, Linux namespaces + overlayfs", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an sccache-dist build server around jailbuilder (drop-in for `sccache-dist server`).
    #[cfg(feature = "sccache")]
    Serve(serve::ServeArgs),
}

pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result: anyhow::Result<ExitCode> = match cli.command {
        #[cfg(feature = "sccache")]
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("jailbuilder: {e:#}");
            ExitCode::FAILURE
        }
    }
}
