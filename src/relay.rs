//! The bidirectional copy between a client and the master, with half-close and timeouts.
//!
//! Each poll reads into a buffer on the poll's own stack and writes it straight on; only bytes
//! the other side cannot take yet are moved to the heap. An idle relayed connection therefore
//! holds no relay buffer at all, which is what lets thousands of idle agents cost little.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::outcome::Outcome;

/// Bytes moved per read: sixteen full TLS records, which rustls encrypts into one vectored
/// write. Against 64 KiB, over ten interleaved rounds of the benchmark's upload: a fifth less
/// proxy CPU per GiB (128 KiB made no measurable difference). The buffer lives on the stack of each poll,
/// never in a connection's state, so it costs an idle connection nothing; a connection whose
/// peer stops reading holds at most this much in `pending` per direction.
pub const CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RelayTimeouts {
    pub idle: Duration,
    pub close: Duration,
}

/// Byte counts the relay keeps current while it copies, for `status` to read mid-connection:
/// one relaxed add per read, in memory the connection already owns.
#[derive(Debug, Default)]
pub struct LiveBytes {
    /// Client to master.
    pub up: AtomicU64,
    /// Master to client.
    pub down: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RelayResult {
    /// Bytes from the client to the master.
    pub up: u64,
    /// Bytes from the master to the client.
    pub down: u64,
    pub outcome: Outcome,
}

// === impl Half ===

#[derive(Debug, PartialEq, Eq)]
enum HalfState {
    Copying,
    ShuttingDown,
    Done,
}

/// One direction of the copy.
#[derive(Debug)]
struct Half {
    state: HalfState,
    /// Bytes read but not yet accepted by the writer; empty (and unallocated) when idle.
    pending: Vec<u8>,
    pending_pos: usize,
    need_flush: bool,
    bytes: u64,
}

impl Half {
    fn new() -> Half {
        Half {
            state: HalfState::Copying,
            pending: Vec::new(),
            pending_pos: 0,
            need_flush: false,
            bytes: 0,
        }
    }

    fn done(&self) -> bool {
        self.state == HalfState::Done
    }

    /// Ends on EOF: a peer closing without TLS close_notify is an ordinary end of stream.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        scratch: &mut [MaybeUninit<u8>],
        live: Option<&AtomicU64>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            match self.state {
                HalfState::Done => return Poll::Ready(Ok(())),
                HalfState::ShuttingDown => {
                    ready!(flush_if_needed(writer.as_mut(), cx, &mut self.need_flush))?;
                    // The peer may already be gone; its half is over either way.
                    match ready!(writer.as_mut().poll_shutdown(cx)) {
                        Ok(()) => {}
                        Err(e) if is_disconnect(&e) => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                    self.state = HalfState::Done;
                    return Poll::Ready(Ok(()));
                }
                HalfState::Copying => {}
            }

            ready!(write_from(
                writer.as_mut(),
                cx,
                &self.pending,
                &mut self.pending_pos,
                &mut self.need_flush
            ))?;
            if !self.pending.is_empty() {
                // Give the memory back: a connection that goes idle holds no buffer.
                self.pending = Vec::new();
                self.pending_pos = 0;
            }

            let mut buf = ReadBuf::uninit(scratch);
            match reader.as_mut().poll_read(cx, &mut buf) {
                Poll::Pending => {
                    ready!(flush_if_needed(writer.as_mut(), cx, &mut self.need_flush))?;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.state = HalfState::ShuttingDown;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let data = buf.filled();
                    if data.is_empty() {
                        self.state = HalfState::ShuttingDown;
                        continue;
                    }
                    self.bytes += data.len() as u64;
                    if let Some(live) = live {
                        live.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    let mut off = 0;
                    if write_from(writer.as_mut(), cx, data, &mut off, &mut self.need_flush)?
                        .is_pending()
                    {
                        self.pending = data[off..].to_vec();
                        self.pending_pos = 0;
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

/// Writes `data[*off..]` until it is all taken (`Ready(Ok)`), the writer is full (`Pending`,
/// with `*off` at the first byte not taken) or fails.
fn write_from<W: AsyncWrite + ?Sized>(
    mut writer: Pin<&mut W>,
    cx: &mut Context<'_>,
    data: &[u8],
    off: &mut usize,
    need_flush: &mut bool,
) -> Poll<io::Result<()>> {
    while *off < data.len() {
        let n = ready!(writer.as_mut().poll_write(cx, &data[*off..]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *off += n;
        *need_flush = true;
    }
    Poll::Ready(Ok(()))
}

fn flush_if_needed<W: AsyncWrite + ?Sized>(
    writer: Pin<&mut W>,
    cx: &mut Context<'_>,
    need_flush: &mut bool,
) -> Poll<io::Result<()>> {
    if *need_flush {
        ready!(writer.poll_flush(cx))?;
        *need_flush = false;
    }
    Poll::Ready(Ok(()))
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotConnected
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::UnexpectedEof
    )
}

// === impl Relay ===

/// Copies `client` ⇄ `server` until both directions end, a timeout passes, or a peer fails.
/// A client's EOF becomes a write shutdown toward the server (close_notify + FIN for TLS) and
/// the other direction goes on until it ends or `timeouts.close` passes.
pub(crate) struct Relay<'l, A, B> {
    client: A,
    server: B,
    up: Half,
    down: Half,
    timeouts: RelayTimeouts,
    timer: Pin<Box<Sleep>>,
    last_activity: Instant,
    close_deadline: Option<Instant>,
    live: Option<&'l LiveBytes>,
}

impl<'l, A, B> Relay<'l, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    pub fn new(client: A, server: B, timeouts: RelayTimeouts) -> Self {
        let now = Instant::now();
        Relay {
            client,
            server,
            up: Half::new(),
            down: Half::new(),
            timeouts,
            timer: Box::pin(tokio::time::sleep_until(now + timeouts.idle)),
            last_activity: now,
            close_deadline: None,
            live: None,
        }
    }

    /// Keeps `live`, when given, current as bytes move (it starts from whatever it holds).
    pub fn counting(mut self, live: Option<&'l LiveBytes>) -> Self {
        self.live = live;
        self
    }

    fn result(&self, outcome: Outcome) -> RelayResult {
        RelayResult {
            up: self.up.bytes,
            down: self.down.bytes,
            outcome,
        }
    }
}

impl<A, B> Future for Relay<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    type Output = RelayResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayResult> {
        let this = self.get_mut();
        let before = this.up.bytes + this.down.bytes;
        // Lives on this poll's stack only, never in the future's state.
        let mut scratch = [MaybeUninit::<u8>::uninit(); CHUNK];

        if !this.up.done() {
            if let Poll::Ready(Err(_)) = this.up.poll_copy(
                cx,
                Pin::new(&mut this.client),
                Pin::new(&mut this.server),
                &mut scratch,
                this.live.map(|l| &l.up),
            ) {
                return Poll::Ready(this.result(Outcome::Reset));
            }
        }
        if !this.down.done() {
            if let Poll::Ready(Err(_)) = this.down.poll_copy(
                cx,
                Pin::new(&mut this.server),
                Pin::new(&mut this.client),
                &mut scratch,
                this.live.map(|l| &l.down),
            ) {
                return Poll::Ready(this.result(Outcome::Reset));
            }
        }
        if this.up.done() && this.down.done() {
            return Poll::Ready(this.result(Outcome::Ok));
        }

        let now = Instant::now();
        if this.up.bytes + this.down.bytes != before {
            this.last_activity = now;
        }
        if this.close_deadline.is_none() && (this.up.done() || this.down.done()) {
            let close_at = now + this.timeouts.close;
            this.close_deadline = Some(close_at);
            if close_at < this.timer.deadline() {
                this.timer.as_mut().reset(close_at);
            }
        }
        // The timer is re-armed only when it fires, never per byte: activity just moves
        // `last_activity`, and a fired timer checks the real deadlines.
        loop {
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            let idle_at = this.last_activity + this.timeouts.idle;
            if now >= idle_at {
                return Poll::Ready(this.result(Outcome::IdleTimeout));
            }
            let mut next = idle_at;
            if let Some(close_at) = this.close_deadline {
                if now >= close_at {
                    return Poll::Ready(this.result(Outcome::CloseTimeout));
                }
                next = next.min(close_at);
            }
            this.timer.as_mut().reset(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    fn timeouts(idle_ms: u64, close_ms: u64) -> RelayTimeouts {
        RelayTimeouts {
            idle: Duration::from_millis(idle_ms),
            close: Duration::from_millis(close_ms),
        }
    }

    #[tokio::test]
    async fn answer_after_client_eof_still_arrives() {
        let (client_far, client_near) = duplex(64 * 1024);
        let (server_near, server_far) = duplex(64 * 1024);
        let relay = tokio::spawn(Relay::new(client_near, server_near, timeouts(5_000, 5_000)));
        let (mut cr, mut cw) = tokio::io::split(client_far);
        let (mut sr, mut sw) = tokio::io::split(server_far);
        cw.write_all(b"question").await.unwrap();
        cw.shutdown().await.unwrap();
        let mut got = Vec::new();
        sr.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"question");
        sw.write_all(b"answer after EOF").await.unwrap();
        sw.shutdown().await.unwrap();
        let mut back = Vec::new();
        cr.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"answer after EOF");
        let r = relay.await.unwrap();
        assert_eq!((r.up, r.down, r.outcome), (8, 16, Outcome::Ok));
    }

    #[tokio::test]
    async fn live_counts_move_while_the_connection_is_open() {
        let (client_far, client_near) = duplex(64 * 1024);
        let (server_near, server_far) = duplex(64 * 1024);
        let live: &'static LiveBytes = Box::leak(Box::default());
        let relay = tokio::spawn(
            Relay::new(client_near, server_near, timeouts(5_000, 5_000)).counting(Some(live)),
        );
        let (mut cr, mut cw) = tokio::io::split(client_far);
        let (mut sr, mut sw) = tokio::io::split(server_far);
        cw.write_all(b"twelve bytes").await.unwrap();
        let mut got = [0u8; 12];
        sr.read_exact(&mut got).await.unwrap();
        sw.write_all(b"five!").await.unwrap();
        let mut back = [0u8; 5];
        cr.read_exact(&mut back).await.unwrap();
        // Still open, and the counts are already there.
        assert_eq!(live.up.load(Ordering::Relaxed), 12);
        assert_eq!(live.down.load(Ordering::Relaxed), 5);
        cw.shutdown().await.unwrap();
        sw.shutdown().await.unwrap();
        let r = relay.await.unwrap();
        assert_eq!((r.up, r.down), (12, 5));
    }

    #[tokio::test]
    async fn close_timeout_ends_a_half_closed_connection() {
        let (client_far, client_near) = duplex(1024);
        let (server_near, _server_far) = duplex(1024);
        let relay = tokio::spawn(Relay::new(client_near, server_near, timeouts(60_000, 200)));
        let (_cr, mut cw) = tokio::io::split(client_far);
        cw.shutdown().await.unwrap();
        let started = Instant::now();
        let r = relay.await.unwrap();
        assert_eq!(r.outcome, Outcome::CloseTimeout);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn idle_timeout_is_rolling() {
        let (client_far, client_near) = duplex(1024);
        let (server_near, mut server_far) = duplex(1024);
        let relay = tokio::spawn(Relay::new(client_near, server_near, timeouts(300, 60_000)));
        let (_cr, mut cw) = tokio::io::split(client_far);
        let started = Instant::now();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            cw.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            server_far.read_exact(&mut b).await.unwrap();
        }
        let r = relay.await.unwrap();
        assert_eq!(r.outcome, Outcome::IdleTimeout);
        assert!(
            started.elapsed() >= Duration::from_millis(750),
            "activity must push the deadline"
        );
        assert_eq!(r.up, 4);
    }

    #[tokio::test]
    async fn backpressure_keeps_bytes_in_order() {
        // A tiny pipe toward the server forces partial writes and the pending path.
        let (client_far, client_near) = duplex(256 * 1024);
        let (server_near, server_far) = duplex(512);
        let relay = tokio::spawn(Relay::new(client_near, server_near, timeouts(5_000, 5_000)));
        let (_cr, mut cw) = tokio::io::split(client_far);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let expect = data.clone();
        let writer = tokio::spawn(async move {
            cw.write_all(&data).await.unwrap();
            cw.shutdown().await.unwrap();
        });
        let (mut sr, mut sw) = tokio::io::split(server_far);
        let mut got = Vec::new();
        sr.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        sw.shutdown().await.unwrap();
        assert_eq!(got, expect);
        assert_eq!(relay.await.unwrap().outcome, Outcome::Ok);
    }

    /// Polls the relay once, as the runtime would after a wake-up.
    async fn poll_once<A, B>(relay: &mut Relay<'_, A, B>) -> bool
    where
        A: AsyncRead + AsyncWrite + Unpin,
        B: AsyncRead + AsyncWrite + Unpin,
    {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *relay).poll(cx).is_pending())).await
    }

    // Unconstrained: the relay is polled by hand inside the test's task, and a spent
    // cooperative budget would make its writes yield with nobody to poll it again.
    #[tokio::test]
    async fn idle_after_a_stalled_bulk_transfer_holds_no_buffer() {
        tokio::task::unconstrained(idle_after_stall()).await;
    }

    async fn idle_after_stall() {
        // The read buffer is never part of a connection's state.
        let size = std::mem::size_of::<Relay<tokio::io::DuplexStream, tokio::io::DuplexStream>>();
        assert!(size < 1024, "the relay future is {size} bytes");
        let (client_far, client_near) = duplex(CHUNK);
        let (server_near, mut server_far) = duplex(4096);
        let mut relay = Relay::new(client_near, server_near, timeouts(60_000, 60_000));
        let (_cr, mut cw) = tokio::io::split(client_far);
        cw.write_all(&vec![1u8; CHUNK]).await.unwrap();
        assert!(poll_once(&mut relay).await);
        assert!(
            relay.up.pending.capacity() > 0,
            "a writer that takes only part of a read leaves the rest pending"
        );
        let mut got = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while got < CHUNK {
            got += server_far.read(&mut buf).await.unwrap();
            assert!(poll_once(&mut relay).await);
        }
        assert_eq!(got, CHUNK);
        for half in [&relay.up, &relay.down] {
            assert_eq!(half.pending.capacity(), 0, "an idle connection holds no buffer");
        }
    }
}
