//! Starting a test server that lives as long as the test process.
#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (free when asked; servers bind it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Spawns `cmd` so that it is killed when the test process ends: the
/// kernel's parent-death signal fires when the *thread* that spawned the
/// child exits, so the spawn happens on a thread that never does.
pub fn spawn_for_process(mut cmd: Command) -> std::io::Result<u32> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let _ = tx.send(cmd.spawn().map(|c| c.id()));
        loop {
            std::thread::park();
        }
    });
    rx.recv().unwrap()
}

/// Waits until something listens on `port`; false after `secs` seconds.
pub fn wait_for_port(port: u16, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A server that cannot be had: fails the test loudly in CI (`CI=true`),
/// where `scripts/test.sh` installed it; elsewhere the caller skips.
pub fn unavailable<T>(server: &str, why: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{server}: {why} (scripts/test.sh installs it)");
    }
    eprintln!("{server}: {why}; skipping the tests that need it");
    None
}
