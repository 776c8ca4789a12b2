//! `hvctl console DOMAIN [--force]`, as `virsh console`: attaches to the domain's serial
//! console through hvd (the connection becomes the console's raw byte stream), copies stdin to
//! it and its bytes to stdout, with the terminal in raw mode while attached (restored on every
//! way out) when stdin is one. Ctrl-] detaches, as does the end of stdin; the session also ends
//! when the domain stops.

use std::io::{Read, Write};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::connect::Conn;

/// Ctrl-]: virsh's escape character.
const ESCAPE: u8 = 0x1d;

/// Runs the console verb.
pub async fn run(conn: &Conn, domain: &str, force: bool) -> Result<(), String> {
    let io = conn.console(domain, force).await?;
    println!("Connected to domain '{domain}'");
    println!("Escape character is ^] (Ctrl + ])");
    let raw = RawTerminal::enter();
    let result = session(io).await;
    // Restored before anything else is printed, on success and on error alike.
    drop(raw);
    println!();
    result
}

/// Copies stdin to the console (up to Ctrl-]) and the console to stdout.
async fn session(io: hv::host::http::Upgraded) -> Result<(), String> {
    let (mut rd, mut wr) = tokio::io::split(io);
    let (tx, mut keys) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    // Blocking stdin in a thread of its own; it ends with the process.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 1024];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || tx.blocking_send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut out = std::io::stdout();
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            k = keys.recv() => {
                let Some(k) = k else { break };
                let (send, detach) = match k.iter().position(|&b| b == ESCAPE) {
                    Some(i) => (&k[..i], true),
                    None => (&k[..], false),
                };
                wr.write_all(send).await.map_err(|e| format!("console: {e}"))?;
                if detach {
                    break;
                }
            }
            n = rd.read(&mut buf) => {
                match n.map_err(|e| format!("console: {e}"))? {
                    // The daemon ended the session: the domain stopped, or --force took it.
                    0 => break,
                    n => out
                        .write_all(&buf[..n])
                        .and_then(|()| out.flush())
                        .map_err(|e| format!("writing the console's output: {e}"))?,
                }
            }
        }
    }
    let _ = wr.shutdown().await;
    Ok(())
}

/// A terminal in raw mode until dropped.
struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    /// Puts stdin in raw mode, if it is a terminal.
    fn enter() -> Option<RawTerminal> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}
