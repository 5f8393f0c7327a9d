//! Azurite (npm `azurite`), Microsoft's Azure Storage emulator, for tests:
//! its blob service started once per test process on a free port of
//! 127.0.0.1, with one container made through the Python SDK
//! (`azure-storage-blob`). `scripts/test.sh` installs both. Without them a
//! test fails loudly in CI (`CI=true`); elsewhere it is skipped.
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::sync::OnceLock;

// The includer declares `server` (tests/support/server.rs) beside this module.
use super::server;

/// The emulator's well-known development account key.
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
pub const CONTAINER: &str = "tessera-tests";

pub struct Azurite {
    pub url: String,
}

impl Azurite {
    /// What `object_store` needs to reach the emulator.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            ("AZURITE_BLOB_STORAGE_URL", self.url.clone()),
        ]
    }
}

pub fn server() -> Option<&'static Azurite> {
    static SERVER: OnceLock<Option<Azurite>> = OnceLock::new();
    SERVER.get_or_init(start).as_ref()
}

fn unavailable(why: String) -> Option<Azurite> {
    server::unavailable("Azurite", &why)
}

fn start() -> Option<Azurite> {
    let dir = std::env::temp_dir().join(format!("tessera-azurite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = server::free_port();
    let mut cmd = Command::new("azurite-blob");
    cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
        .args(["--skipApiVersionCheck", "--disableTelemetry", "--silent"])
        .arg("--location")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Err(e) = server::spawn_for_process(cmd) {
        return unavailable(format!("azurite-blob does not start: {e}"));
    }
    if !server::wait_for_port(port, 30) {
        return unavailable(format!("azurite-blob did not listen on port {port}"));
    }
    let url = format!("http://127.0.0.1:{port}");
    let script = format!(
        "from azure.storage.blob import BlobServiceClient\n\
         cs = 'DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};BlobEndpoint={url}/devstoreaccount1;'\n\
         BlobServiceClient.from_connection_string(cs).create_container('{CONTAINER}')\n"
    );
    match Command::new("python3").args(["-c", &script]).output() {
        Ok(out) if out.status.success() => Some(Azurite { url }),
        Ok(out) => unavailable(format!(
            "creating the container failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => unavailable(format!("python3: {e}")),
    }
}
