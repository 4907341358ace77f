//! The relay: bulk data intact both ways, half-close in each direction, a master that
//! closes without close_notify, idle and close timeouts, the access-log line.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{Context, SHA256};
use common::*;

#[test]
fn transfers_64_mib_each_way_intact() {
    const SIZE: u64 = 64 << 20;
    let dir = tempdir();
    let master = Master::start(
        dir.path(),
        Behavior::Hash {
            send: SIZE,
            seed: 2,
        },
    );
    let proxy = master.cfg().start(dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    let local = c.local_addr().unwrap();

    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut ctx = Context::new(&SHA256);
        let mut pattern = Pattern::new(1);
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = SIZE;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            pattern.fill(&mut buf[..n]);
            ctx.update(&buf[..n]);
            w.write_all(&buf[..n]).expect("upload through proxy");
            left -= n as u64;
        }
        w.shutdown(Shutdown::Write).unwrap();
        ctx.finish().as_ref().to_vec()
    });

    let mut ctx = Context::new(&SHA256);
    let mut received = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = c.read(&mut buf).expect("download through proxy");
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        received += n as u64;
    }
    let received_sha = ctx.finish().as_ref().to_vec();
    let sent_sha = writer.join().unwrap();

    let fin = master.server.finished(1);
    assert_eq!(fin.error, None, "master side: {fin:?}");
    assert_eq!(fin.received, SIZE, "bytes the master received");
    assert_eq!(fin.received_sha256, sent_sha, "upload corrupted");
    assert_eq!(received, SIZE, "bytes the client received");
    assert_eq!(received_sha, fin.sent_sha256, "download corrupted");

    let access = proxy.access_line(local);
    assert_eq!(access["bytes_up"], SIZE, "access line: {access}");
    assert_eq!(access["bytes_down"], SIZE, "access line: {access}");
    assert_eq!(access["outcome"], "ok", "access line: {access}");
}

#[test]
fn half_close_answer_arrives_after_client_fin() {
    let dir = tempdir();
    let answer = b"answer written after the client's FIN\n".to_vec();
    let master = Master::start(dir.path(), Behavior::AnswerAfterEof(answer.clone()));
    let proxy = master.cfg().start(dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    let local = c.local_addr().unwrap();
    c.write_all(b"question\n").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let got = read_until_closed(&mut c, Duration::from_secs(10));
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&answer)
    );
    let fin = master.server.finished(1);
    assert_eq!(fin.received_data, b"question\n");
    assert_eq!(fin.error, None, "master saw: {fin:?}");
    let access = proxy.access_line(local);
    assert_eq!(access["outcome"], "ok", "access line: {access}");
    assert_eq!(access["bytes_up"], 9);
    assert_eq!(access["bytes_down"], answer.len());
}

#[test]
fn master_half_close_client_keeps_sending() {
    let dir = tempdir();
    let greeting = b"master says hello and closes its side\n".to_vec();
    let master = Master::start(dir.path(), Behavior::GreetThenHalfClose(greeting.clone()));
    let proxy = master.cfg().start(dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    let local = c.local_addr().unwrap();
    // The client sends first so that auto ALPN does not wait for it.
    c.write_all(b"first ").unwrap();
    let got = read_until_closed(&mut c, Duration::from_secs(10));
    assert_eq!(
        got, greeting,
        "the master's FIN must reach the client after its data"
    );
    // Our direction is still open: keep talking, then finish.
    c.write_all(b"and more after your FIN\n").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let fin = master.server.finished(1);
    assert_eq!(
        String::from_utf8_lossy(&fin.received_data),
        "first and more after your FIN\n"
    );
    let access = proxy.access_line(local);
    assert_eq!(access["outcome"], "ok", "access line: {access}");
}

#[test]
fn master_close_without_close_notify_is_ordinary_end() {
    let dir = tempdir();
    let master = Master::start(
        dir.path(),
        Behavior::ReplyThenDropWithoutCloseNotify {
            expect: 5,
            reply: b"bye\n".to_vec(),
        },
    );
    let proxy = master.cfg().start(dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    let local = c.local_addr().unwrap();
    c.write_all(b"hello").unwrap();
    let got = read_until_closed(&mut c, Duration::from_secs(10));
    assert_eq!(got, b"bye\n");
    drop(c);
    let access = proxy.access_line(local);
    assert_eq!(access["outcome"], "ok", "access line: {access}");
    assert_eq!(access["bytes_down"], 4);
    assert!(
        proxy.find(|v| v["message"] == "upstream failed").is_none(),
        "a missing close_notify is not an upstream failure:\n{}",
        proxy.stderr()
    );
}

#[test]
fn idle_timeout_closes_quiet_connection() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master.cfg().extra("timeouts: {idle: 1s}").start(dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    let local = c.local_addr().unwrap();
    assert_eq!(roundtrip(&mut c, b"x"), b"x");
    let quiet_since = Instant::now();
    let got = read_until_closed(&mut c, Duration::from_secs(6));
    let waited = quiet_since.elapsed();
    assert!(got.is_empty());
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the 1s idle timeout"
    );
    let access = proxy.access_line(local);
    assert_eq!(access["outcome"], "idle_timeout", "access line: {access}");
}

#[test]
fn idle_timeout_is_rolling() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master.cfg().extra("timeouts: {idle: 2s}").start(dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    let local = c.local_addr().unwrap();
    // Time is the behaviour here: traffic every 250 ms for twice the idle timeout.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        assert_eq!(roundtrip(&mut c, b"tick"), b"tick", "closed while active");
        std::thread::sleep(Duration::from_millis(250));
    }
    finish(&mut c);
    let access = proxy.access_line(local);
    assert_eq!(access["outcome"], "ok", "access line: {access}");
}

#[test]
fn close_timeout_after_client_fin() {
    let dir = tempdir();
    // The master reads to EOF and then neither answers nor closes.
    let master = Master::start(dir.path(), Behavior::Hold);
    let proxy = master
        .cfg()
        .extra("timeouts: {close: 1s}")
        .start(dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    let local = c.local_addr().unwrap();
    c.write_all(b"done\n").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let fin_at = Instant::now();
    let got = read_until_closed(&mut c, Duration::from_secs(6));
    let waited = fin_at.elapsed();
    assert!(got.is_empty());
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the 1s close timeout"
    );
    let access = proxy.access_line(local);
    assert_eq!(access["outcome"], "close_timeout", "access line: {access}");
}

#[test]
fn close_timeout_after_master_fin() {
    let dir = tempdir();
    let master = Master::start(
        dir.path(),
        Behavior::GreetThenHalfClose(b"that is all from me\n".to_vec()),
    );
    let proxy = master
        .cfg()
        .extra("timeouts: {close: 1s}")
        .start(dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    let local = c.local_addr().unwrap();
    c.write_all(b"hi").unwrap();
    let got = read_until_closed(&mut c, Duration::from_secs(5));
    assert_eq!(got, b"that is all from me\n");
    // The client never finishes its direction: the proxy gives up after timeouts.close.
    let access = proxy.access_line(local);
    assert_eq!(access["outcome"], "close_timeout", "access line: {access}");
    let ms = access["duration_ms"]
        .as_f64()
        .expect("duration_ms is a number");
    assert!(ms >= 900.0, "ended after {ms} ms, before the close timeout");
    drop(c);
}

#[test]
fn access_log_line_has_every_field() {
    let dir = tempdir();
    let master = Master::start_with(dir.path(), |b| b.alpn(&["h2", "http/1.1"]).tls13_only());
    let proxy = master
        .cfg()
        .tls("master_cert_name", "det-master")
        .start(dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    let local = c.local_addr().unwrap();
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(roundtrip(&mut c, req), req);
    finish(&mut c);
    let a = proxy.access_line(local);
    assert_eq!(a["level"], "INFO", "{a}");
    assert!(a["timestamp"].is_string(), "{a}");
    assert_eq!(a["listener"], "main", "{a}");
    assert_eq!(a["client"], local.to_string().as_str(), "{a}");
    assert_eq!(
        a["master"],
        format!("127.0.0.1:{}", master.server.port()).as_str(),
        "{a}"
    );
    assert_eq!(a["sni"], "det-master", "{a}");
    assert_eq!(a["alpn"], "http/1.1", "{a}");
    assert_eq!(a["tls_version"], "TLSv1.3", "{a}");
    assert_eq!(a["resumed"], false, "{a}");
    assert_eq!(a["bytes_up"], req.len(), "{a}");
    assert_eq!(a["bytes_down"], req.len(), "{a}");
    assert!(a["duration_ms"].is_number(), "{a}");
    assert_eq!(a["outcome"], "ok", "{a}");
}
