//! The `jailbuilder` command. See `jailbuilder --help`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
