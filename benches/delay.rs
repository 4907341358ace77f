//! `delay`: a TCP relay that puts a round trip of `--rtt-ms` between its clients and `--to`,
//! for the first-byte benchmark (benches/firstbyte.sh). This machine's kernel has no netem, so
//! the delay is made here, in user space.
//!
//! Each direction is delayed by half the round trip, chunk by chunk, in order (a FIN too).
//! A new connection also pays the TCP handshake a real path would cost: nothing the client
//! sends is delivered before one full round trip after the connection was accepted, so the
//! client's first bytes arrive 1.5 round trips after its connect began, as over a real link
//! (connect returns after one round trip, the bytes take half of one more).
//!
//! ```text
//! delay --listen 127.0.0.1:0 --to 127.0.0.1:PORT --rtt-ms 50
//! ```
//! Once listening it prints one JSON line on stdout: `{"listen": "127.0.0.1:N"}`.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "TCP relay adding a round-trip delay (first-byte benchmark)")]
struct Args {
    /// Where to listen (loopback only).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to relay to (loopback only).
    #[arg(long)]
    to: SocketAddr,
    /// The round trip to add, milliseconds (0: relay without delay).
    #[arg(long, default_value_t = 0)]
    rtt_ms: u64,
}

fn main() {
    let args = Args::parse();
    for (a, what) in [(&args.listen, "--listen"), (&args.to, "--to")] {
        if let Err(e) = common::require_loopback(a, what) {
            eprintln!("delay: {e}");
            std::process::exit(2);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(args.listen).await.unwrap_or_else(|e| {
            eprintln!("delay: bind {}: {e}", args.listen);
            std::process::exit(1);
        });
        let local = listener.local_addr().expect("local addr");
        println!("{}", serde_json::json!({ "listen": local.to_string() }));
        let _ = std::io::stdout().flush();
        let rtt = Duration::from_millis(args.rtt_ms);
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(relay(client, args.to, rtt));
        }
    });
}

/// One connection: the far side is dialled at once (loopback); the delays are applied to the
/// bytes.
async fn relay(client: TcpStream, to: SocketAddr, rtt: Duration) {
    let accepted = Instant::now();
    let Ok(server) = TcpStream::connect(to).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let half = rtt / 2;
    tokio::join!(
        pipe(cr, sw, half, accepted + rtt),
        pipe(sr, cw, half, accepted)
    );
}

/// Copies `r` to `w`, each chunk (and the EOF) delivered `delay` after it was read, and never
/// before `not_before + delay`.
async fn pipe(mut r: OwnedReadHalf, mut w: OwnedWriteHalf, delay: Duration, not_before: Instant) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Option<Vec<u8>>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = r.read(&mut buf).await.unwrap_or(0);
            let at = Instant::now().max(not_before) + delay;
            let chunk = (n > 0).then(|| buf[..n].to_vec());
            if tx.send((at, chunk)).is_err() || n == 0 {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            match chunk {
                Some(data) => {
                    if w.write_all(&data).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = w.shutdown().await;
                    return;
                }
            }
        }
    };
    tokio::join!(reader, writer);
}
