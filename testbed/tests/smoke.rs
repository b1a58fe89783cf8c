//! The stack works end to end with plain clients (none of mailroom's code): AUTH
//! and send through submission (STARTTLS) and SMTPS, fetch back over IMAPS and
//! POP3S, wrong passwords refused, IDLE woken by a delivery, and the cleartext
//! listeners really offer no STARTTLS.

use std::time::{Duration, Instant};

use testbed::{LineClient, SINK as SINK_USER, Stack, User};

fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn sasl_plain(user: &str, password: &str) -> String {
    b64(&format!("\0{user}\0{password}"))
}

fn smtp_send(mut c: LineClient, from: &User, to: &str, subject: &str) -> LineClient {
    let auth = c
        .smtp(&format!(
            "AUTH PLAIN {}",
            sasl_plain(&from.address, &from.password)
        ))
        .unwrap();
    assert!(auth[0].starts_with("235"), "{auth:?}");
    assert!(c.smtp(&format!("MAIL FROM:<{}>", from.address)).unwrap()[0].starts_with("250"));
    assert!(c.smtp(&format!("RCPT TO:<{to}>")).unwrap()[0].starts_with("250"));
    assert!(c.smtp("DATA").unwrap()[0].starts_with("354"));
    c.send_raw(
        format!(
            "From: <{}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\nbody\r\n.\r\n",
            from.address
        )
        .as_bytes(),
    )
    .unwrap();
    let accepted = c.smtp_reply().unwrap();
    assert!(accepted[0].starts_with("250"), "{accepted:?}");
    c
}

fn starttls_submission(stack: &Stack) -> LineClient {
    let mut c = LineClient::plain(stack.submission(), stack.ca_pem()).unwrap();
    c.smtp_reply().unwrap();
    let ehlo = c.smtp("EHLO client.test").unwrap();
    assert!(ehlo.iter().any(|l| l.contains("STARTTLS")), "{ehlo:?}");
    assert!(
        !ehlo.iter().any(|l| l.contains("AUTH")),
        "AUTH offered before TLS: {ehlo:?}"
    );
    assert!(c.smtp("STARTTLS").unwrap()[0].starts_with("220"));
    let mut c = c.upgrade().unwrap();
    let ehlo = c.smtp("EHLO client.test").unwrap();
    assert!(ehlo.iter().any(|l| l.contains("AUTH")), "{ehlo:?}");
    c
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn imaps_subjects(stack: &Stack, user: &User) -> Vec<String> {
    let mut c = LineClient::tls(stack.imaps(), stack.ca_pem()).unwrap();
    c.line().unwrap();
    let login = c
        .imap("a", &format!("LOGIN {} {}", user.address, user.password))
        .unwrap();
    assert!(login.last().unwrap().starts_with("a OK"), "{login:?}");
    c.imap("b", "SELECT INBOX").unwrap();
    let fetched = c
        .imap("c", "FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        .unwrap();
    fetched
        .iter()
        .filter_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
        .collect()
}

#[test]
fn send_through_submission_and_smtps_then_fetch_over_imaps_and_pop3s() {
    let stack = Stack::shared();
    eprintln!(
        "mail servers ready in {} ms",
        stack.startup_time().as_millis()
    );
    let alice = stack.create_user("alice").unwrap();
    let bob = stack.create_user("bob").unwrap();

    smtp_send(
        starttls_submission(stack),
        &alice,
        &bob.address,
        "via submission",
    );
    let mut smtps = LineClient::tls(stack.smtps(), stack.ca_pem()).unwrap();
    smtps.smtp_reply().unwrap();
    smtps.smtp("EHLO client.test").unwrap();
    smtp_send(smtps, &alice, &bob.address, "via smtps");

    wait_for("two deliveries", || {
        stack.messages(&bob.address, "INBOX").unwrap().len() == 2
    });
    let mut subjects = imaps_subjects(stack, &bob);
    subjects.sort();
    assert_eq!(subjects, ["via smtps", "via submission"]);

    let mut pop = LineClient::tls(stack.pop3s(), stack.ca_pem()).unwrap();
    assert!(pop.line().unwrap().starts_with("+OK"));
    pop.send(&format!("USER {}", bob.address)).unwrap();
    assert!(pop.line().unwrap().starts_with("+OK"));
    pop.send(&format!("PASS {}", bob.password)).unwrap();
    assert!(pop.line().unwrap().starts_with("+OK"));
    pop.send("STAT").unwrap();
    assert!(pop.line().unwrap().starts_with("+OK 2 "));
}

#[test]
fn mail_to_other_domains_lands_in_the_sink() {
    let stack = Stack::shared();
    let alice = stack.create_user("carol").unwrap();
    let before = stack
        .messages(testbed::SINK, "INBOX")
        .map(|m| m.len())
        .unwrap_or(0);
    smtp_send(
        starttls_submission(stack),
        &alice,
        "someone@gmail.com",
        "outside",
    );
    wait_for("the sink delivery", || {
        stack
            .messages(testbed::SINK, "INBOX")
            .map(|m| m.len())
            .unwrap_or(0)
            == before + 1
    });
}

#[test]
fn wrong_passwords_are_refused_everywhere() {
    let stack = Stack::shared();
    let user = stack.create_user("dave").unwrap();

    let mut imap = LineClient::tls(stack.imaps(), stack.ca_pem()).unwrap();
    imap.line().unwrap();
    let r = imap
        .imap("a", &format!("LOGIN {} wrongpassword", user.address))
        .unwrap();
    assert!(r.last().unwrap().starts_with("a NO"), "{r:?}");

    let mut pop = LineClient::tls(stack.pop3s(), stack.ca_pem()).unwrap();
    pop.line().unwrap();
    pop.send(&format!("USER {}", user.address)).unwrap();
    pop.line().unwrap();
    pop.send("PASS wrongpassword").unwrap();
    assert!(pop.line().unwrap().starts_with("-ERR"));

    let mut smtp = LineClient::tls(stack.smtps(), stack.ca_pem()).unwrap();
    smtp.smtp_reply().unwrap();
    smtp.smtp("EHLO client.test").unwrap();
    let r = smtp
        .smtp(&format!(
            "AUTH PLAIN {}",
            sasl_plain(&user.address, "wrongpassword")
        ))
        .unwrap();
    assert!(r[0].starts_with("535"), "{r:?}");
    let mut sub = starttls_submission(stack);
    let r = sub
        .smtp(&format!(
            "AUTH PLAIN {}",
            sasl_plain(&user.address, "wrongpassword")
        ))
        .unwrap();
    assert!(r[0].starts_with("535"), "{r:?}");
}

#[test]
fn idle_is_advertised_and_woken_by_a_delivery() {
    let stack = Stack::shared();
    let user = stack.create_user("erin").unwrap();
    let mut c = LineClient::tls(stack.imaps(), stack.ca_pem()).unwrap();
    c.line().unwrap();
    let caps = c
        .imap("a", &format!("LOGIN {} {}", user.address, user.password))
        .unwrap();
    assert!(caps.iter().any(|l| l.contains(" IDLE")), "{caps:?}");
    c.imap("b", "SELECT INBOX").unwrap();
    c.send("c IDLE").unwrap();
    assert!(c.line().unwrap().starts_with('+'));
    let sent = Instant::now();
    stack
        .deliver(&user.address, &["Subject: wake up\r\n\r\nnow\r\n"])
        .unwrap();
    let line = c.lines_until(|l| l.ends_with("EXISTS")).unwrap();
    eprintln!(
        "IDLE woke {} ms after the delivery: {line:?}",
        sent.elapsed().as_millis()
    );
    c.send("DONE").unwrap();
    c.lines_until(|l| l.starts_with("c ")).unwrap();
}

#[test]
fn cleartext_listeners_offer_no_starttls() {
    let stack = Stack::shared();
    let p = stack.ports();

    let mut imap = LineClient::plain(stack.cleartext(p.imap), stack.ca_pem()).unwrap();
    let greeting = imap.line().unwrap();
    assert!(
        greeting.starts_with("* OK") && !greeting.contains("STARTTLS"),
        "{greeting}"
    );
    let caps = imap.imap("a", "CAPABILITY").unwrap();
    assert!(!caps.iter().any(|l| l.contains("STARTTLS")), "{caps:?}");
    // Nor does it refuse LOGIN in clear.
    assert!(
        !caps.iter().any(|l| l.contains("LOGINDISABLED")),
        "{caps:?}"
    );

    let mut pop = LineClient::plain(stack.cleartext(p.pop3), stack.ca_pem()).unwrap();
    pop.line().unwrap();
    pop.send("CAPA").unwrap();
    let capa = pop.lines_until(|l| l == ".").unwrap();
    assert!(!capa.iter().any(|l| l == "STLS"), "{capa:?}");

    let mut smtp = LineClient::plain(stack.cleartext(p.submission), stack.ca_pem()).unwrap();
    smtp.smtp_reply().unwrap();
    let ehlo = smtp.smtp("EHLO client.test").unwrap();
    assert!(!ehlo.iter().any(|l| l.contains("STARTTLS")), "{ehlo:?}");
    // It does accept a password in clear: a client that sent one would be exposed.
    assert!(ehlo.iter().any(|l| l.contains("AUTH")), "{ehlo:?}");

    // The regular STARTTLS ports do offer it.
    let mut imap = LineClient::plain(stack.imap(), stack.ca_pem()).unwrap();
    assert!(imap.line().unwrap().contains("STARTTLS"));
    let mut pop = LineClient::plain(stack.pop3(), stack.ca_pem()).unwrap();
    pop.line().unwrap();
    pop.send("CAPA").unwrap();
    assert!(
        pop.lines_until(|l| l == ".")
            .unwrap()
            .iter()
            .any(|l| l == "STLS")
    );
}

#[test]
fn mailbox_state_is_readable_for_assertions() {
    let stack = Stack::shared();
    let user = stack.create_user("frank").unwrap();
    let messages: Vec<String> = (0..50)
        .map(|i| format!("Subject: m{i}\r\n\r\nbody {i}\r\n"))
        .collect();
    stack.deliver(&user.address, &messages).unwrap();
    let stored = stack.messages(&user.address, "INBOX").unwrap();
    assert_eq!(stored.len(), 50);
    assert!(stored.iter().all(|m| !m.has_flag("\\Seen")));
    stack.create_folder(&user.address, "Processed").unwrap();
    let folders = stack.folders(&user.address).unwrap();
    assert!(folders.contains(&"Processed".to_owned()), "{folders:?}");
    assert!(stack.messages(&user.address, "Missing").is_err());
}

#[test]
fn an_owned_stack_stops_its_processes_on_drop() {
    let stack = Stack::start(testbed::Options::default()).unwrap();
    let dir = stack.dir().to_owned();
    let pgids = std::fs::read_to_string(dir.join("pgids")).unwrap();
    let imaps = stack.imaps();
    drop(stack);
    for pgid in pgids.lines() {
        // Killed members may take a moment to be reaped by init.
        wait_for(&format!("process group {pgid} to end"), || {
            let alive = std::process::Command::new("kill")
                .args(["-0", "--", &format!("-{pgid}")])
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            !alive.success()
        });
    }
    assert!(
        std::net::TcpStream::connect(imaps).is_err(),
        "IMAPS still listening"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn seeded_maildir_messages_are_served() {
    let stack = Stack::shared();
    let user = stack.create_user("seed").unwrap();
    let messages: Vec<String> = (0..20)
        .map(|i| format!("Subject: s{i}\r\n\r\nbody\r\n"))
        .collect();
    stack.seed(&user.address, &messages).unwrap();
    assert_eq!(stack.messages(&user.address, "INBOX").unwrap().len(), 20);
    assert_eq!(imaps_subjects(stack, &user).len(), 20);
}

#[test]
fn an_sdbox_stack_serves_seeded_mail_and_keeps_flags_out_of_file_names() {
    let stack = Stack::start(testbed::Options {
        mail_store: testbed::MailStore::Sdbox,
        ..Default::default()
    })
    .unwrap();
    let user = stack.create_user("sdbox").unwrap();
    let messages: Vec<String> = (0..20)
        .map(|i| format!("Subject: s{i}\r\n\r\nbody\r\n"))
        .collect();
    stack.seed(&user.address, &messages).unwrap();
    assert_eq!(imaps_subjects(&stack, &user).len(), 20);

    let (local, domain) = user.address.split_once('@').unwrap();
    let mailbox = stack
        .dir()
        .join("mail")
        .join(domain)
        .join(local)
        .join("sdbox");
    // sdbox names a message's file `u.<UID>`, whatever its flags.
    let message_files = || {
        let mut names: Vec<String> = walk(&mailbox)
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .filter(|n| n.starts_with("u."))
            .collect();
        names.sort();
        names
    };
    let before = message_files();
    assert_eq!(before.len(), 20, "{before:?}");
    let mut c = LineClient::tls(stack.imaps(), stack.ca_pem()).unwrap();
    c.line().unwrap();
    c.imap("a", &format!("LOGIN {} {}", user.address, user.password))
        .unwrap();
    c.imap("b", "SELECT INBOX").unwrap();
    let stored = c.imap("c", "UID STORE 1:* +FLAGS.SILENT (\\Seen)").unwrap();
    assert!(stored.last().unwrap().starts_with("c OK"), "{stored:?}");
    let seen = stack.messages(&user.address, "INBOX").unwrap();
    assert!(seen.iter().all(|m| m.has_flag("\\Seen")), "{seen:?}");
    assert_eq!(message_files(), before, "a flag change renamed files");
    assert!(
        stack.inbox(&user.address).is_err(),
        "inbox() reads maildirs only"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn bearer_tokens_sign_in_to_imap_pop3_and_smtp_and_revoked_ones_do_not() {
    let stack = Stack::shared();
    let user = stack.create_user("oauth").unwrap();
    let oauth = stack.oauth();
    let (client, _) = oauth.register_client(Default::default());
    let token = oauth.access_token(&client, &user.address);
    let xoauth2 = b64(&format!(
        "user={}\x01auth=Bearer {token}\x01\x01",
        user.address
    ));
    let bearer = b64(&format!(
        "n,a={},\x01host=127.0.0.1\x01port=993\x01auth=Bearer {token}\x01\x01",
        user.address
    ));

    let mut imap = LineClient::tls(stack.imaps(), stack.ca_pem()).unwrap();
    imap.line().unwrap();
    let caps = imap.imap("a", "CAPABILITY").unwrap();
    assert!(
        caps[0].contains("AUTH=XOAUTH2") && caps[0].contains("AUTH=OAUTHBEARER"),
        "{caps:?}"
    );
    let r = imap
        .imap("b", &format!("AUTHENTICATE XOAUTH2 {xoauth2}"))
        .unwrap();
    assert!(r.last().unwrap().starts_with("b OK"), "{r:?}");
    let mut imap = LineClient::tls(stack.imaps(), stack.ca_pem()).unwrap();
    imap.line().unwrap();
    let r = imap
        .imap("a", &format!("AUTHENTICATE OAUTHBEARER {bearer}"))
        .unwrap();
    assert!(r.last().unwrap().starts_with("a OK"), "{r:?}");

    let mut pop = LineClient::tls(stack.pop3s(), stack.ca_pem()).unwrap();
    pop.line().unwrap();
    pop.send(&format!("AUTH XOAUTH2 {xoauth2}")).unwrap();
    let r = pop.line().unwrap();
    assert!(r.starts_with("+OK"), "{r}");

    let mut smtp = LineClient::tls(stack.smtps(), stack.ca_pem()).unwrap();
    smtp.smtp_reply().unwrap();
    let ehlo = smtp.smtp("EHLO client.test").unwrap();
    assert!(ehlo.iter().any(|l| l.contains("XOAUTH2")), "{ehlo:?}");
    let r = smtp.smtp(&format!("AUTH XOAUTH2 {xoauth2}")).unwrap();
    assert!(r[0].starts_with("235"), "{r:?}");

    // Another user's token, and a revoked one, are refused.
    let other = oauth.access_token(&client, SINK_USER);
    let mut imap = LineClient::tls(stack.imaps(), stack.ca_pem()).unwrap();
    imap.line().unwrap();
    let stolen = b64(&format!(
        "user={}\x01auth=Bearer {other}\x01\x01",
        user.address
    ));
    imap.send(&format!("a AUTHENTICATE XOAUTH2 {stolen}"))
        .unwrap();
    let challenge = imap.line().unwrap();
    assert!(challenge.starts_with("+ "), "{challenge}");
    imap.send("").unwrap();
    let r = imap.line().unwrap();
    assert!(r.starts_with("a NO"), "{r}");
    oauth.revoke(&client);
    imap.send(&format!("b AUTHENTICATE OAUTHBEARER {bearer}"))
        .unwrap();
    let challenge = imap.line().unwrap();
    assert!(challenge.starts_with("+ "), "{challenge}");
    // RFC 7628: the client answers the error challenge with a lone ^A.
    imap.send(&b64("\x01")).unwrap();
    let r = imap.line().unwrap();
    assert!(r.starts_with("b NO"), "{r}");
}

#[test]
fn smtps_hides_oauthbearer_and_submission_offers_both() {
    let stack = Stack::shared();
    let mut smtps = LineClient::tls(stack.smtps(), stack.ca_pem()).unwrap();
    smtps.smtp_reply().unwrap();
    let ehlo = smtps.smtp("EHLO client.test").unwrap();
    let auth = ehlo.iter().find(|l| l.contains("AUTH ")).unwrap();
    assert!(
        auth.contains("XOAUTH2") && !auth.contains("OAUTHBEARER"),
        "{auth}"
    );
    let mut sub = starttls_submission(stack);
    let ehlo = sub.smtp("EHLO client.test").unwrap();
    let auth = ehlo.iter().find(|l| l.contains("AUTH ")).unwrap();
    assert!(
        auth.contains("XOAUTH2") && auth.contains("OAUTHBEARER"),
        "{auth}"
    );
}
