//! The command dispatcher: one family file per group of commands, all
//! over `context`.

use std::process::ExitCode;

use anyhow::Result;

use crate::args::{Cli, Command};
use crate::context::*;
use crate::{
    fs_commands, mongo_commands, pg_commands, repo_commands, snapshot_commands, vm_commands,
};

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let print_requests = cli.global.print_requests;
    let result = dispatch(cli).await;
    if print_requests {
        print_request_counts();
    }
    result
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Init(a) => repo_commands::init(g, a).await,
        Command::Backup(a) => snapshot_commands::backup(g, a).await,
        Command::Snapshots(a) => snapshot_commands::snapshots(g, a.json).await,
        Command::Forget(a) => snapshot_commands::forget(g, &a).await,
        Command::Prune(a) => snapshot_commands::prune(g, &a.options, a.dry_run, a.json).await,
        Command::Copy(a) => repo_commands::copy(g, a).await,
        Command::Dump { snapshot, name } => snapshot_commands::dump(g, &snapshot, &name).await,
        Command::Restore(a) => snapshot_commands::restore(g, &a).await,
        Command::Ls {
            snapshot,
            path,
            long,
            no_recursive,
            json,
        } => fs_commands::ls(g, &snapshot, path.as_deref(), long, !no_recursive, json).await,
        Command::Find {
            pattern,
            snapshots,
            json,
        } => fs_commands::find(g, &pattern, &snapshots, json).await,
        Command::Diff {
            first,
            second,
            json,
        } => fs_commands::diff(g, &first, &second, json).await,
        Command::Cat { what, id } => repo_commands::cat(g, what, id.as_deref()).await,
        Command::Check(a) => repo_commands::check(g, a).await,
        Command::Repair { command } => repo_commands::repair(g, command).await,
        Command::Key { command } => repo_commands::key(g, command).await,
        Command::Stats(a) => repo_commands::stats(g, a.json).await,
        Command::Pg { command } => pg_commands::run(g, command).await,
        Command::Vm { command } => vm_commands::run(g, command).await,
        Command::Mongo { command } => mongo_commands::run(g, command).await,
    }
}
