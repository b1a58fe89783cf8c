//! Filter engine throughput on pre-parsed messages with 100-entry lists (emails,
//! domains, keywords), beside a naive linear scan of the same lists.
//!
//!     cargo bench --bench filter
//!
//! Criterion prints "thrpt" in messages (elements) per second, on one core.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mail_parser::MessageParser;
use mailroom::api::FilterType;
use mailroom_core::filter::{Filter, MessageFacts};

const WORDS: &[&str] = &[
    "printer", "network", "password", "reset", "laptop", "screen", "error", "please", "help",
    "urgent", "office", "email", "account", "access", "server", "the", "is", "not", "working",
    "since", "morning",
];

fn lists() -> (Vec<String>, Vec<String>, Vec<String>) {
    let emails = (0..100)
        .map(|i| format!("person{i}@partner{i}.example"))
        .collect();
    let domains = (0..100)
        .map(|i| {
            if i % 4 == 0 {
                format!("*.corp{i}.example")
            } else {
                format!("corp{i}.example")
            }
        })
        .collect();
    let keywords = (0..100).map(|i| format!("project codename {i}")).collect();
    (emails, domains, keywords)
}

fn messages() -> Vec<MessageFacts> {
    (0..1000)
        .map(|i| {
            let mut rng = fastrand::Rng::with_seed(i);
            let from = match i % 4 {
                0 => format!("person{}@partner{}.example", i % 100, i % 100),
                1 => format!("user{i}@mail.corp{}.example", i % 100),
                2 => format!("user{i}@elsewhere.example"),
                _ => format!("User {i} <user{i}@gmail.example>"),
            };
            let mut body = String::new();
            while body.len() < 300 {
                body.push_str(WORDS[rng.usize(0..WORDS.len())]);
                body.push(' ');
            }
            if i % 10 == 0 {
                body.push_str("about project codename 42");
            }
            let raw = format!(
                "From: {from}\r\nSubject: {} {}\r\n\r\n{body}\r\n",
                WORDS[i as usize % 21],
                i
            );
            MessageFacts::from_message(
                &MessageParser::default().parse(raw.as_bytes()).unwrap(),
                true,
            )
        })
        .collect()
}

/// What a first version would write: compare against every entry in turn,
/// lower-casing as it goes, and search the text once per keyword.
fn naive(
    emails: &[String],
    domains: &[String],
    keywords: &[String],
    m: &MessageFacts,
) -> Option<usize> {
    let sender = m.sender.as_ref().ok()?.to_lowercase();
    let domain = sender
        .rsplit_once('@')
        .map(|(_, d)| d.to_owned())
        .unwrap_or_default();
    if let Some(i) = emails.iter().position(|e| e.to_lowercase() == sender) {
        return Some(i);
    }
    if let Some(i) = domains.iter().position(|d| match d.strip_prefix("*.") {
        Some(rest) => {
            domain == rest.to_lowercase() || domain.ends_with(&format!(".{}", rest.to_lowercase()))
        }
        None => domain == d.to_lowercase(),
    }) {
        return Some(i);
    }
    keywords
        .iter()
        .position(|k| m.searchable.contains(&k.to_lowercase()))
}

fn bench(c: &mut Criterion) {
    let (emails, domains, keywords) = lists();
    let facts = messages();
    let filter = Filter::compile(FilterType::Allow, &emails, &domains, &keywords);
    let accepted_fast = facts.iter().filter(|m| filter.judge(m).accepted).count();
    let accepted_naive = facts
        .iter()
        .filter(|m| naive(&emails, &domains, &keywords, m).is_some())
        .count();
    assert_eq!(accepted_fast, accepted_naive, "both judge the same way");
    println!("{accepted_fast} of {} messages match an entry", facts.len());

    let mut group = c.benchmark_group("judge 1000 messages, 100-entry lists");
    group.throughput(Throughput::Elements(facts.len() as u64));
    group.bench_function("mailroom filter", |b| {
        b.iter(|| {
            facts
                .iter()
                .filter(|m| black_box(&filter).judge(black_box(m)).accepted)
                .count()
        })
    });
    group.bench_function("naive linear scan", |b| {
        b.iter(|| {
            facts
                .iter()
                .filter(|m| naive(black_box(&emails), &domains, &keywords, black_box(m)).is_some())
                .count()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
