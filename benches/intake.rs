//! Intake benchmark: 10,000 messages of 2–5 KB in a local Dovecot, fetched over
//! IMAPS. Prints, in the same run and for each of two Dovecot mail stores, the
//! raw bulk-fetch ceiling (a plain client doing `UID FETCH a:b BODY.PEEK[]` in
//! chunks of 500, parsing nothing) and mailroom's rate from mailbox to durably
//! written ticket files, and the ratio.
//!
//!     cargo bench --bench intake            (MESSAGES=N to change the count)

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mailroom_core::incoming::worker::{Counted, Worker, WorkerEvent, WorkerOptions, WorkerStats};
use mailroom_core::sinks::{DirectorySink, Sink, TemporaryFiles};
use mailroom_core::state::FileCursorStore;
use rustls::pki_types::ServerName;
use testbed::{MailStore, Options, Stack};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

mod support;

use support::Secrets;

const WORDS: &[&str] = &[
    "printer", "network", "password", "reset", "laptop", "screen", "error", "please", "help",
    "urgent", "office", "email", "account", "access", "server", "the", "is", "not", "working",
    "since", "morning",
];

fn message(i: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(i as u64);
    let target = 2048 + rng.usize(0..3072);
    let mut body = String::new();
    while body.len() < target {
        body.push_str(WORDS[rng.usize(0..WORDS.len())]);
        body.push(if rng.u8(0..12) == 0 { '\n' } else { ' ' });
    }
    let body = body.replace('\n', "\r\n");
    format!(
        "From: User {i} <user{i}@company.example>\r\nTo: support@mailroom.test\r\nSubject: Request {i}: {}\r\nMessage-ID: <bench-{i}@company.example>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n",
        WORDS[i % WORDS.len()]
    )
}

/// Where tickets go on the disk: a folder of its own that ext4 treats as a
/// top of hierarchy (`chattr +T`), so that each run's ticket folder is placed
/// in block groups of its own. Without it a folder lands where earlier runs
/// or the test suite just deleted tens of thousands of files, and this
/// machine's ext4 (no journal) then skips every recently freed inode one by
/// one on each file creation: 10–30 times slower, for minutes.
///
/// `TICKET_DISK=/some/folder` puts them elsewhere, e.g. on a fresh journaled
/// ext4 mounted from a loop device.
fn disk_root() -> PathBuf {
    let root = std::env::var_os("TICKET_DISK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/mailroom-bench"));
    std::fs::create_dir_all(&root).unwrap();
    let dir = std::fs::File::open(&root).unwrap();
    let spread = rustix::fs::ioctl_getflags(&dir)
        .and_then(|flags| rustix::fs::ioctl_setflags(&dir, flags | rustix::fs::IFlags::TOPDIR));
    if let Err(e) = spread {
        eprintln!(
            "cannot mark {} as a top folder ({e}): file creation there may be slow",
            root.display()
        );
    }
    root
}

fn describe(mode: TemporaryFiles) -> &'static str {
    match mode {
        TemporaryFiles::Named => "temporary file + rename",
        TemporaryFiles::Anonymous => "O_TMPFILE + linkat",
    }
}

type Conn = BufReader<tokio_rustls::client::TlsStream<TcpStream>>;

/// Sends a command and reads to its tagged answer, skipping over literals;
/// returns how many literals (message bodies) came back.
async fn command(conn: &mut Conn, tag: &mut u32, command: String) -> usize {
    *tag += 1;
    let t = format!("r{tag} ");
    let stream = conn.get_mut();
    stream
        .write_all(format!("{t}{command}\r\n").as_bytes())
        .await
        .unwrap();
    // TLS may hold the command until flushed.
    stream.flush().await.unwrap();
    let mut bodies = 0;
    let mut buf = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        conn.read_line(&mut line).await.unwrap();
        if line.starts_with(&t) {
            assert!(line.contains(" OK"), "{line}");
            return bodies;
        }
        let literal = line
            .trim_end()
            .strip_suffix('}')
            .and_then(|l| l.rsplit_once('{'))
            .and_then(|(_, n)| n.parse::<usize>().ok());
        if let Some(n) = literal {
            buf.resize(n, 0);
            conn.read_exact(&mut buf).await.unwrap();
            bodies += 1;
        }
    }
}

/// The ceiling: fetch every message body with as little work as possible.
async fn raw_fetch(stack: &Stack, user: &testbed::User, total: usize) -> usize {
    let config = testbed::tls_config(stack.ca_pem()).unwrap();
    let tcp = TcpStream::connect(stack.imaps()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut conn = BufReader::with_capacity(256 * 1024, tls);
    let mut line = String::new();
    conn.read_line(&mut line).await.unwrap();
    let mut tag = 0;
    command(
        &mut conn,
        &mut tag,
        format!("LOGIN {} {}", user.address, user.password),
    )
    .await;
    command(&mut conn, &mut tag, "EXAMINE INBOX".into()).await;
    let mut fetched = 0;
    let mut start = 1;
    while start <= total {
        let end = (start + 499).min(total);
        fetched += command(
            &mut conn,
            &mut tag,
            format!("UID FETCH {start}:{end} BODY.PEEK[]"),
        )
        .await;
        start = end + 1;
    }
    fetched
}

#[tokio::main]
async fn main() {
    let total: usize = std::env::var("MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let messages: Vec<String> = (0..total).map(message).collect();
    let bytes: usize = messages.iter().map(String::len).sum();
    println!("{total} messages, {} KB average", bytes / total / 1024);
    // Nothing written here is deleted before the end: a mass deletion makes
    // the next file creations on this disk slow for minutes (see disk_root).
    let mut kept = Vec::new();
    let mut stacks = Vec::new();
    // sdbox keeps flags in Dovecot's index; maildir renames a message's file
    // to set a flag, which the raw ceiling never pays.
    for store in [MailStore::Sdbox, MailStore::Maildir] {
        println!("\nDovecot mail store: {store:?}");
        let stack = Stack::start(Options {
            mail_store: store,
            ..Default::default()
        })
        .unwrap();
        let floor = stacks.is_empty();
        kept.extend(run(&stack, &messages, floor).await);
        stacks.push(stack);
    }
    println!(
        "\nfor comparison (reference figures, docs/benchmarks.md): fetchmail ~590/s, getmail6 ~110/s on this kind of machine"
    );
}

/// Measures one stack; returns the folders it wrote, to be removed at the end.
async fn run(stack: &Stack, messages: &[String], floor: bool) -> Vec<tempfile::TempDir> {
    let mut written = Vec::new();
    let total = messages.len();
    let user = stack.create_user("bench").unwrap();
    let second = stack.create_user("bench").unwrap();
    let third = stack.create_user("bench").unwrap();
    let seeding = Instant::now();
    for mailbox in [&user, &second, &third] {
        stack.seed(&mailbox.address, messages).unwrap();
    }
    // Write the seeded mail out now, so that no measurement below pays for it
    // (the ticket writer's syncfs would).
    rustix::fs::sync();
    println!(
        "seeded 3 x {total} messages in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );

    // Warm the server's caches the same way for both runs.
    raw_fetch(stack, &user, total).await;
    let began = Instant::now();
    let fetched = raw_fetch(stack, &user, total).await;
    let raw_secs = began.elapsed().as_secs_f64();
    assert_eq!(fetched, total);
    let raw_rate = total as f64 / raw_secs;
    println!(
        "raw bulk fetch (UID FETCH 1:* BODY.PEEK[] in chunks of 500): {raw_rate:.0} messages/s ({raw_secs:.2} s)"
    );

    let spec: mailroom::api::IncomingEmailServerSpec = serde_json::from_value(serde_json::json!({
        "email": user.address, "provider": "Other", "server": "127.0.0.1", "port": stack.ports().imaps,
        "securityType": "SSL",
        "auth": {"passwordSecretRef": {"name": "mail", "key": "password"}},
        "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}},
    }))
    .unwrap();
    let secrets = Secrets(vec![
        ("mail".into(), "password".into(), user.password.clone()),
        ("ca".into(), "ca.crt".into(), stack.ca_pem().to_owned()),
    ]);
    let settings = mailroom::resolve::incoming_settings(
        &mailroom_core::vocab::ResourceId::new("bench", "intake"),
        &spec,
        support::sources(&secrets),
    )
    .unwrap();

    if floor {
        // The disk's own floor for one-file-per-ticket: the same write protocol
        // (a file per ticket, syncfs per batch of 500, naming, directory
        // fsync) with ready-made tickets and no mail at all, once per way of
        // writing a ticket's file.
        let batches: Vec<Arc<[_]>> = messages
            .chunks(500)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|m| {
                        mailroom_core::ticket::map(
                            m.as_bytes(),
                            &settings.ticket,
                            jiff::Timestamp::now(),
                        )
                        .unwrap()
                    })
                    .collect()
            })
            .collect();
        for mode in [TemporaryFiles::Named, TemporaryFiles::Anonymous] {
            let floor_dir = tempfile::tempdir_in(disk_root()).unwrap();
            let floor_sink = DirectorySink::open_with(floor_dir.path(), mode).unwrap();
            let began = Instant::now();
            for batch in batches.iter().cloned() {
                floor_sink.deliver(batch).await.unwrap();
            }
            let floor_rate = total as f64 / began.elapsed().as_secs_f64();
            println!(
                "ticket files alone on this disk ({}; no mail, same durability): {floor_rate:.0} tickets/s = {:.0} % of the raw ceiling",
                describe(mode),
                100.0 * floor_rate / raw_rate
            );
            written.push(floor_dir);
        }
    }

    // mailroom three times, on three mailboxes with the same mail: tickets on
    // the disk (durable) written either way, then on tmpfs, which shows what
    // the pipeline costs when file creation is cheap. All mark processed
    // mail seen (the default).
    raw_fetch(stack, &second, total).await;
    raw_fetch(stack, &third, total).await;
    for (label, dir, mailbox, mode) in [
        (
            "ticket files on disk",
            tempfile::tempdir_in(disk_root()).unwrap(),
            &third,
            TemporaryFiles::Named,
        ),
        (
            "ticket files on disk",
            tempfile::tempdir_in(disk_root()).unwrap(),
            &user,
            TemporaryFiles::Anonymous,
        ),
        (
            "ticket files on tmpfs (/dev/shm)",
            tempfile::tempdir_in("/dev/shm").unwrap(),
            &second,
            TemporaryFiles::Anonymous,
        ),
    ] {
        let mut settings = settings.clone();
        settings.server.credentials = mailroom_core::config::Credentials::Basic {
            username: mailbox.address.clone(),
            password: mailbox.password.clone().into(),
        };
        let sink = Arc::new(Sink::Directory(
            DirectorySink::open_with(dir.path().join("tickets"), mode).unwrap(),
        ));
        let store = Arc::new(FileCursorStore::new(dir.path().join("state")));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // Done when the cursor has moved past the last message: its ticket is
        // written and its mail marked seen.
        let (done_tx, done) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut done_tx = Some(done_tx);
            while let Some(event) = rx.recv().await {
                match &event {
                    // A failure here would otherwise look like a slow run: say it.
                    WorkerEvent::ConnectionFailed { report, .. } => {
                        eprintln!("worker: {}: {}", report.reason, report.message);
                    }
                    WorkerEvent::CursorAdvanced(cursor)
                        if cursor
                            .imap
                            .as_ref()
                            .is_some_and(|c| c.last_uid as usize >= total) =>
                    {
                        if let Some(tx) = done_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    _ => {}
                }
            }
        });
        let began = Instant::now();
        let stats = Arc::new(WorkerStats::default());
        let observer = Counted {
            stats: stats.clone(),
            inner: tx,
        };
        let handle = Worker::spawn(
            settings,
            sink,
            store,
            Arc::new(observer),
            WorkerOptions::default(),
        );
        if tokio::time::timeout(Duration::from_secs(300), done)
            .await
            .is_err()
        {
            panic!(
                "stalled at {} tickets\n{}",
                stats.tickets_created.load(Ordering::Relaxed),
                stack.log_tail()
            );
        }
        let secs = began.elapsed().as_secs_f64();
        handle.stop().await;
        assert_eq!(
            stats.tickets_created.load(Ordering::Relaxed),
            total as u64,
            "every message became a ticket"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("tickets"))
                .unwrap()
                .count(),
            total
        );
        let rate = total as f64 / secs;
        println!(
            "mailroom, mailbox -> tickets ({label}, {}): {rate:.0} messages/s ({secs:.2} s) = {:.0} % of the raw ceiling",
            describe(mode),
            100.0 * rate / raw_rate
        );
        written.push(dir);
    }
    written
}
