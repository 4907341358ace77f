//! The master's socket as rustls sees it: the first bytes kept for diagnosis, reads ahead
//! while data flows, and a shutdown that can leave the TCP stream open (inside a tunnel).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much is read from the master's socket at once. rustls asks for a record or less at a
/// time; once data streams, one read of a relay chunk serves a whole relay read of plaintext.
/// Against 64 KiB: a download makes less than half the system calls (and acknowledgements,
/// each of which wakes the master's sender) and spends 4–8 % less proxy CPU per GiB. A stalled
/// download can hold up to this much unread here besides the relay's own pending bytes
/// (tests/faults.rs bounds both).
pub(crate) const READ_AHEAD: usize = crate::relay::CHUNK;

/// The master's socket as rustls sees it:
/// - it keeps the first bytes the master sent, so a failed handshake can tell plaintext HTTP
///   from a broken TLS stack (a few bytes per connection);
/// - it reads ahead in [`READ_AHEAD`] chunks while data is flowing, and gives the buffer back
///   as soon as the socket has nothing more, so an idle connection holds none.
#[derive(Debug)]
pub struct Sniffed<IO> {
    io: IO,
    first: [u8; 8],
    len: u8,
    ahead: bytes::BytesMut,
    /// The last read filled the read-ahead: data is streaming, read a whole chunk next.
    burst: bool,
    /// A shutdown flushes but sends no FIN (the stream is a tunnel through an egress proxy).
    pub(crate) hold_fin: bool,
}

impl<IO> Sniffed<IO> {
    pub fn new(io: IO) -> Self {
        Sniffed {
            io,
            first: [0; 8],
            len: 0,
            ahead: bytes::BytesMut::new(),
            burst: false,
            hold_fin: false,
        }
    }
    /// What the master sent first: its own words, escaped when shown.
    pub fn first(&self) -> crate::untrusted::Untrusted<&[u8]> {
        crate::untrusted::Untrusted::new(&self.first[..self.len as usize])
    }

    fn sniff(&mut self, new: &[u8]) {
        let at = self.len as usize;
        let take = new.len().min(self.first.len() - at);
        self.first[at..at + take].copy_from_slice(&new[..take]);
        self.len += take as u8;
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Sniffed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        use bytes::Buf;
        let this = self.get_mut();
        if this.ahead.is_empty() {
            // A reader with room for a whole chunk gets the socket directly.
            if buf.remaining() >= READ_AHEAD {
                let before = buf.filled().len();
                let r = Pin::new(&mut this.io).poll_read(cx, buf);
                if (this.len as usize) < this.first.len() {
                    let new = buf.filled()[before..].to_vec();
                    this.sniff(&new);
                }
                return r;
            }
            // A small message (a request, a heartbeat) gets a quarter chunk, as much as it
            // ever needed; only a stream that filled the last one gets a whole chunk.
            let want = if this.burst { READ_AHEAD } else { READ_AHEAD / 4 };
            this.ahead.reserve(want);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.ahead) {
                Poll::Pending => {
                    // Nothing more for now: an idle connection keeps no buffer.
                    this.ahead = bytes::BytesMut::new();
                    this.burst = false;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(_)) => this.burst = this.ahead.len() == this.ahead.capacity(),
            }
        }
        let n = buf.remaining().min(this.ahead.len());
        buf.put_slice(&this.ahead[..n]);
        if (this.len as usize) < this.first.len() {
            let new = this.ahead[..n].to_vec();
            this.sniff(&new);
        }
        this.ahead.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Sniffed<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.hold_fin {
            return Pin::new(&mut this.io).poll_flush(cx);
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{duplex, AsyncWriteExt, DuplexStream};

    /// Counts the reads that reach the socket under the wrapper.
    struct Counting {
        io: DuplexStream,
        reads: usize,
    }

    impl AsyncRead for Counting {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads += 1;
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    /// rustls reads a record's worth at a time; the socket under it must see one read per
    /// relay read (so a download costs no more system calls than an upload), and nothing
    /// held once it runs dry.
    #[tokio::test]
    async fn reads_ahead_in_relay_chunks_and_holds_nothing_when_dry() {
        const SENT: usize = 3 * crate::relay::CHUNK / 2;
        let (mut far, near) = duplex(2 * SENT);
        far.write_all(&vec![7u8; SENT]).await.unwrap();
        let mut s = Sniffed::new(Counting { io: near, reads: 0 });
        let mut got = 0;
        let dry = poll_fn(|cx| loop {
            let mut record = [0u8; 16 * 1024];
            let mut buf = ReadBuf::new(&mut record);
            match Pin::new(&mut s).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Ready(got),
                Poll::Ready(r) => {
                    r.unwrap();
                    assert!(buf.filled().iter().all(|&b| b == 7));
                    got += buf.filled().len();
                }
            }
        })
        .await;
        assert_eq!(dry, SENT);
        // A quarter chunk, a whole chunk, the rest, and the read that found the socket dry.
        assert_eq!(s.io.reads, 4, "socket reads for {SENT} bytes");
        assert_eq!(s.ahead.capacity(), 0, "an idle connection keeps no read-ahead");
        assert_eq!(*s.first().raw(), &[7u8; 8]);
    }
}
