//! `tessera`: the command-line interface. Thin: parses arguments, calls
//! `tessera-core`, prints.

mod args;
mod commands;
mod context;
mod credentials;
mod fs_commands;
mod mongo_args;
mod mongo_commands;
mod output;
mod pg_commands;
mod repo_commands;
mod snapshot_commands;
mod vm_args;
mod vm_commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    tessera_fs::raise_open_file_limit();
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
    let own_signals = cli.command.handles_signals();
    let result = runtime.block_on(async {
        if own_signals {
            return commands::run(cli).await;
        }
        tokio::select! {
            result = commands::run(cli) => result,
            (name, code) = signalled() => {
                // The command stopped where it was; what it had begun
                // to write is garbage for a later prune.
                context::interrupted(name).await;
                Ok(ExitCode::from(code))
            }
        }
    });
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

/// Waits for SIGINT or SIGTERM; returns its name and the exit status a
/// shell gives a process it killed (128 + the signal's number).
pub(crate) async fn signalled() -> (&'static str, u8) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => ("interrupted", 130),
        _ = term.recv() => ("terminated", 143),
    }
}

/// A reader that went away (`tessera dump … | head`) is not a failure.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
