//! `tessera`: the command-line interface. Thin: parses arguments, calls
//! `tessera-core`, prints.

mod args;
mod commands;
mod credentials;
mod fs_commands;
mod output;
mod pg_commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tessera: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(commands::run(cli));
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera: error: {e:#}");
            if format!("{e:#}").contains("InvalidObjectState") {
                eprintln!(
                    "tessera: hint: the object is in an archive storage class and must be restored (thawed) first; `tessera restore SNAPSHOT --target DIR --plan` lists the data packs a restore reads"
                );
            }
            ExitCode::FAILURE
        }
    }
}

/// A reader that went away (`tessera dump … | head`) is not a failure.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
