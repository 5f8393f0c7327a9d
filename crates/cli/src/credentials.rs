//! Where the password or key file comes from, restic-style.

use std::io::IsTerminal;
use std::process::Command;

use anyhow::{Context, Result, bail};
use tessera_core::Credential;

use crate::args::{Global, OtherRepo};

/// The credential that opens the repository: `--key-file`, then
/// `TESSERA_PASSWORD`, `--password-file`, `--password-command`, then a
/// prompt on the terminal.
pub fn credential(global: &Global, confirm: bool) -> Result<Credential> {
    if let Some(path) = &global.key_file {
        return key_file(path);
    }
    password_from(
        "TESSERA_PASSWORD",
        global.password_file.as_deref(),
        global.password_command.as_deref(),
        "repository password",
        confirm,
    )
    .map(Credential::password)
}

/// A new password for `key add` / `key passwd`: `TESSERA_NEW_PASSWORD`,
/// `--new-password-file`, or a prompt (asked twice).
fn key_file(path: &std::path::Path) -> Result<Credential> {
    let contents = std::fs::read_to_string(path)
        .with_context(|| format!("reading key file {}", path.display()))?;
    Credential::key_file(&contents).with_context(|| format!("key file {}", path.display()))
}

/// The credential of a second repository (`copy --to`, `init
/// --copy-params-from`): its key file, or a password from `env`, its
/// password file or command, or the terminal.
pub fn other_credential(other: &OtherRepo, env: &str, what: &str) -> Result<Credential> {
    if let Some(path) = &other.key_file {
        return key_file(path);
    }
    password_from(
        env,
        other.password_file.as_deref(),
        other.password_command.as_deref(),
        what,
        false,
    )
    .map(Credential::password)
}

pub fn new_password(file: Option<&std::path::Path>) -> Result<Credential> {
    password_from("TESSERA_NEW_PASSWORD", file, None, "new password", true)
        .map(Credential::password)
}

fn password_from(
    env: &str,
    file: Option<&std::path::Path>,
    command: Option<&str>,
    what: &str,
    confirm: bool,
) -> Result<String> {
    if let Ok(p) = std::env::var(env) {
        return non_empty(p, env);
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading password file {}", path.display()))?;
        return non_empty(
            first_line(&text),
            &format!("password file {}", path.display()),
        );
    }
    if let Some(cmd) = command {
        let out = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .output()
            .with_context(|| format!("running password command {cmd:?}"))?;
        if !out.status.success() {
            bail!("password command {cmd:?} failed with {}", out.status);
        }
        let text = String::from_utf8(out.stdout).context("password command printed non-UTF-8")?;
        return non_empty(first_line(&text), "password command");
    }
    if std::io::stderr().is_terminal() {
        let p = rpassword::prompt_password(format!("enter {what}: "))
            .context("reading the password from the terminal")?;
        if confirm {
            let again = rpassword::prompt_password(format!("enter {what} again: "))?;
            if again != p {
                bail!("the passwords do not match");
            }
        }
        return non_empty(p, "terminal");
    }
    bail!(
        "no {what} given: set {env}, use --password-file or --password-command, or run on a terminal to be asked"
    )
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

fn non_empty(p: String, source: &str) -> Result<String> {
    if p.is_empty() {
        bail!("empty password from {source}");
    }
    Ok(p)
}
