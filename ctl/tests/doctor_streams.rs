//! `cerectl doctor` prints each check's row as it finishes: rows of quick
//! checks reach a pipe while a slow SMTP check still waits for its banner.
//!
//! Runs the real binary offline (`--domain`, `--public-ip`, no VPS) with
//! only the mail checks: inbound 25 on 127.0.0.1 (nothing listens: refused at
//! once), PROXY (not checked without the VPS: at once), and outbound 25
//! (`--probe-25`) against a server here that accepts and says nothing until
//! the test lets it go.

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Longer than the test ever waits for an early row: before streaming, no
/// row came before this ran out.
const SMTP_TIMEOUT_SECS: u64 = 60;

#[test]
fn doctor_prints_rows_before_the_slow_check_finishes() {
    let slow = TcpListener::bind("127.0.0.1:0").unwrap();
    let slow_addr = slow.local_addr().unwrap();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        // Hold the connection, silent, until the test has seen the early rows.
        let (conn, _) = slow.accept().unwrap();
        let _ = release_rx.recv();
        drop(conn);
    });
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cerectl"))
        .args(["--dir", dir.path().to_str().unwrap()])
        .args(["doctor", "--skip-dns", "--domain", "example.com"])
        .args(["--public-ip", "127.0.0.1"])
        .args(["--probe-25", &slow_addr.to_string()])
        .args(["--smtp-timeout", &SMTP_TIMEOUT_SECS.to_string()])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (line_tx, line_rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    // Read until both quick rows are in; the watchdog is far below the SMTP
    // timeout, so a doctor that prints at the end fails here.
    let mut early = Vec::new();
    let watchdog = Duration::from_secs(20);
    while !(early
        .iter()
        .any(|l: &String| l.contains("SMTP") && l.contains("127.0.0.1:25"))
        && early.iter().any(|l| l.contains("PROXY")))
    {
        match line_rx.recv_timeout(watchdog) {
            Ok(line) => early.push(line),
            Err(e) => {
                let _ = child.kill();
                panic!("no early rows within {watchdog:?} ({e}); got so far: {early:#?}");
            }
        }
    }
    assert!(
        early[0].starts_with("Doctor for example.com"),
        "the header comes first: {early:#?}"
    );
    let slow_row = format!("outbound to {slow_addr}");
    assert!(
        !early.iter().any(|l| l.contains(&slow_row)),
        "the slow check cannot have finished: {early:#?}"
    );
    // Let the slow server go: the outbound row and the summary follow.
    release_tx.send(()).unwrap();
    server.join().unwrap();
    let rest: Vec<String> = line_rx.iter().collect();
    reader.join().unwrap();
    let status = child.wait().unwrap();
    assert!(
        rest.iter()
            .any(|l| l.contains("SMTP") && l.contains(&slow_row)),
        "{rest:#?}"
    );
    assert!(
        rest.last()
            .is_some_and(|l| l.contains("passed") && l.contains("not checked")),
        "the summary comes last: {rest:#?}"
    );
    // Inbound 25 refused and the slow server silent: a failing report.
    assert_eq!(status.code(), Some(1), "{early:#?}\n{rest:#?}");
}
