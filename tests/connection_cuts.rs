//! The IMAP connection closed between a command and its answer, as a server
//! shutting down closes it: `* BYE`, then a clean TLS close. A command the
//! server never answered OK did not happen, so the cursor stays before it and
//! the next session takes the mail again: nothing is skipped and nothing is
//! left unmarked. The real Dovecot serves the mail behind a relay that makes
//! the cut at a chosen command.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mailroom_core::connection::Reason;
use mailroom_core::incoming::worker::{WorkerEvent, WorkerOptions};
use mailroom_core::state::FileCursorStore;
use support::worker::*;
use testbed::{Stack, TestCerts};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A TLS relay in front of Dovecot's IMAPS port. Everything passes until
/// the worker sends the `nth` command (over all sessions) containing `word`:
/// that command never reaches Dovecot, and the worker reads `* BYE` and a
/// clean close instead of an answer.
struct Relay {
    port: u16,
    certs: TestCerts,
    sessions: Arc<AtomicUsize>,
}

async fn relay(stack: &Stack, word: &'static str, nth: usize) -> Relay {
    let certs = testbed::test_certificates().unwrap();
    let acceptor = testbed::tls_acceptor(&certs, &[]).unwrap();
    let connector = tokio_rustls::TlsConnector::from(testbed::tls_config(stack.ca_pem()).unwrap());
    let upstream = stack.imaps();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sessions = Arc::new(AtomicUsize::new(0));
    let counted = sessions.clone();
    let seen = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            let (acceptor, connector, seen) = (acceptor.clone(), connector.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(client) = acceptor.accept(tcp).await else {
                    return;
                };
                let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let server = connector.connect(name, server).await.unwrap();
                let (client_read, mut client_write) = tokio::io::split(client);
                let (mut server_read, mut server_write) = tokio::io::split(server);
                let mut commands = BufReader::new(client_read);
                let down = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                    client_write
                });
                let mut line = Vec::new();
                loop {
                    line.clear();
                    if commands.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let cut = String::from_utf8_lossy(&line).contains(word)
                        && seen.fetch_add(1, Ordering::SeqCst) + 1 == nth;
                    if cut {
                        break;
                    }
                    if server_write.write_all(&line).await.is_err() {
                        return;
                    }
                    let _ = server_write.flush().await;
                }
                // Dovecot sees the relay leave and closes its side, which
                // ends the copy and hands back the worker's half.
                let _ = server_write.shutdown().await;
                let Ok(mut client_write) = down.await else {
                    return;
                };
                let _ = client_write
                    .write_all(b"* BYE Server shutting down.\r\n")
                    .await;
                let _ = client_write.shutdown().await;
            });
        }
    });
    Relay {
        port,
        certs,
        sessions,
    }
}

/// Ten messages, a worker taking five a batch through a relay that cuts at
/// the `nth` command containing `word`. The cut must be reported as a
/// protocol error naming `verb`; once the next session waits in IDLE, every
/// message is one ticket, no ticket was reported created twice, and every
/// message is marked seen.
async fn cut_and_recover(hint: &str, word: &'static str, nth: usize, verb: &str) {
    let stack = Stack::shared();
    let user = stack.create_user(hint).unwrap();
    stack
        .deliver(&user.address, &(0..10).map(customer).collect::<Vec<_>>())
        .unwrap();
    let relay = relay(stack, word, nth).await;
    let out = tempfile::tempdir().unwrap();
    let s = imaps_at(stack, &user, relay.port, &relay.certs.ca_pem);
    let store = Arc::new(FileCursorStore::new(out.path().join("state")));
    let options = WorkerOptions { batch: 5, ..fast() };
    let mut run = start(s, dir_sink(&out.path().join("t")), store, options);

    let failed = run
        .until("the cut reported", |e| {
            matches!(e, WorkerEvent::ConnectionFailed { report, .. } if report.reason == Reason::ProtocolError)
        })
        .await;
    let WorkerEvent::ConnectionFailed { report, .. } = failed else {
        unreachable!()
    };
    assert!(
        report.message.contains(verb) && report.message.contains("closed the connection"),
        "{}",
        report.message
    );
    run.until("IDLE after the cut", |e| {
        matches!(e, WorkerEvent::CaughtUp { idle: true, .. })
    })
    .await;
    let created = run.stats.tickets_created.load(Ordering::Relaxed);
    run.handle.stop().await;

    let mut ids: Vec<_> = tickets(&out.path().join("t"))
        .into_iter()
        .map(|t| t.message_id)
        .collect();
    assert_eq!(ids.len(), 10, "one ticket per message");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "no Message-ID twice");
    assert!(created <= 10, "no ticket created twice");
    let unseen: Vec<u32> = stack
        .messages(&user.address, "INBOX")
        .unwrap()
        .iter()
        .filter(|m| !m.has_flag("\\Seen"))
        .map(|m| m.uid)
        .collect();
    assert!(unseen.is_empty(), "unseen UIDs {unseen:?}");
    assert!(
        relay.sessions.load(Ordering::Relaxed) >= 2,
        "it signed in again"
    );
}

/// Without the check of STORE's answer, the first batch's marking counted as
/// done, the cursor moved past it, and its five messages stayed unseen for
/// good (what a Dovecot restart at that moment did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_never_answered_is_sent_again_by_the_next_session() {
    cut_and_recover("cut-store", "UID STORE", 1, "UID STORE").await;
}

/// Without the check of FETCH's answer, the second batch came back empty,
/// counted as judged, and its five messages were never taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_never_answered_skips_no_mail() {
    cut_and_recover("cut-fetch", "BODY.PEEK[]", 2, "UID FETCH").await;
}
