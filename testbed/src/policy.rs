//! A Postfix policy delegation service (the protocol greylisting daemons
//! speak), in the test process. Postfix asks it about every recipient; it
//! answers 451 for the SASL logins the test marks as deferred and DUNNO for
//! the rest. Postfix asks afresh for each recipient, so a deferral begins and
//! ends in the middle of an open SMTP session, as a real server's "try again
//! later" does.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::Error;

pub(crate) struct PolicyService {
    addr: SocketAddr,
    deferred: Arc<Mutex<HashSet<String>>>,
    stop: Arc<AtomicBool>,
}

impl PolicyService {
    pub(crate) fn start() -> Result<Self, Error> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let deferred = Arc::new(Mutex::new(HashSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, flag) = (deferred.clone(), stop.clone());
        thread::Builder::new()
            .name("postfix-policy".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(conn) = conn {
                        let d = d.clone();
                        thread::spawn(move || serve(conn, &d));
                    }
                }
            })?;
        Ok(Self {
            addr,
            deferred,
            stop,
        })
    }

    /// `inet:host:port` for `check_policy_service`.
    pub(crate) fn endpoint(&self) -> String {
        format!("inet:{}", self.addr)
    }

    pub(crate) fn set_deferred(&self, login: &str, deferred: bool) {
        let mut set = self
            .deferred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if deferred {
            set.insert(login.to_owned());
        } else {
            set.remove(login);
        }
    }
}

impl Drop for PolicyService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// One smtpd's connection: requests of `name=value` lines ending with an
/// empty line, each answered with `action=…` and an empty line.
fn serve(conn: TcpStream, deferred: &Mutex<HashSet<String>>) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut login = String::new();
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else {
            return;
        };
        if let Some(name) = line.strip_prefix("sasl_username=") {
            login = name.to_owned();
        }
        if !line.is_empty() {
            continue;
        }
        let defer = deferred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&login);
        let action = if defer {
            "451 4.3.2 Service busy, try again later"
        } else {
            "DUNNO"
        };
        if write!(out, "action={action}\n\n").is_err() {
            return;
        }
        login.clear();
    }
}
