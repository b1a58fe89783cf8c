//! Planning a pass over a mailbox: which UIDs go in one command, how fetched
//! mail is cut into batches, and how long to wait after a failure.

use std::time::Duration;

/// Most message bytes fetched in one batch (a single larger message, within
/// maxMessageSize, is a batch of its own): bounds memory with big mail.
pub(crate) const BATCH_BYTES: u64 = 8 * 1024 * 1024;

/// Splits `(UID, size)` pairs, in order, into batches of at most `count`
/// messages and, apart from a single large message, `bytes` bytes. Messages
/// over `max` are never fetched and count nothing.
pub(crate) fn batches(
    sizes: &[(u32, u64)],
    count: usize,
    bytes: u64,
    max: u64,
) -> Vec<&[(u32, u64)]> {
    let mut out = Vec::new();
    let (mut start, mut held) = (0, 0u64);
    for (i, (_, size)) in sizes.iter().enumerate() {
        let size = if *size > max { 0 } else { *size };
        let full = i - start >= count.max(1) || (i > start && held + size > bytes);
        if full {
            out.push(&sizes[start..i]);
            (start, held) = (i, 0);
        }
        held += size;
    }
    if start < sizes.len() {
        out.push(&sizes[start..]);
    }
    out
}

pub(crate) struct Backoff {
    pub attempt: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub(crate) fn next(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        // Jitter keeps many mailboxes of one server from retrying in lockstep.
        exp.min(self.cap).mul_f64(0.8 + fastrand::f64() * 0.4)
    }
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// `1,2,3,7` → `1:3,7`.
pub(crate) fn uid_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        });
        i += 1;
    }
    out.join(",")
}

/// UID sets covering sorted `uids`, each short enough for one command
/// (servers must take lines of 8,192 octets): a run of UIDs costs a few
/// octets, scattered UIDs up to eleven each.
pub(crate) fn uid_sets(uids: &[u32]) -> Vec<String> {
    let mut sets: Vec<String> = Vec::new();
    // 500 UIDs are at most 5,500 octets, however scattered.
    for part in uids.chunks(500) {
        let set = uid_set(part);
        match sets.last_mut() {
            Some(last) if last.len() + 1 + set.len() <= 4000 => {
                last.push(',');
                last.push_str(&set);
            }
            _ => sets.push(set),
        }
    }
    sets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_bounded_by_count_and_bytes() {
        let uids = |b: &[&[(u32, u64)]]| -> Vec<Vec<u32>> {
            b.iter()
                .map(|c| c.iter().map(|(u, _)| *u).collect())
                .collect()
        };
        let small: Vec<(u32, u64)> = (1..=7).map(|u| (u, 10)).collect();
        assert_eq!(
            uids(&batches(&small, 3, 1000, 100)),
            [vec![1, 2, 3], vec![4, 5, 6], vec![7]]
        );
        assert_eq!(
            uids(&batches(&small, 10, 25, 100)),
            [vec![1, 2], vec![3, 4], vec![5, 6], vec![7]]
        );
        // A message larger than a batch's bytes goes alone; one over the
        // maximum is never fetched and takes no room.
        let mixed = [(1, 10), (2, 90), (3, 10), (4, 5000), (5, 10), (6, 10)];
        assert_eq!(
            uids(&batches(&mixed, 10, 50, 100)),
            [vec![1], vec![2], vec![3, 4, 5, 6]]
        );
        assert!(batches(&[], 10, 50, 100).is_empty());
    }

    #[test]
    fn uid_sets_are_compressed() {
        assert_eq!(uid_set(&[7, 1, 2, 3, 9, 10]), "1:3,7,9:10");
        assert_eq!(uid_set(&[5]), "5");
    }

    #[test]
    fn long_uid_lists_are_split_into_short_commands() {
        let run: Vec<u32> = (1..=10_000).collect();
        assert_eq!(uid_sets(&run).len(), 1, "{:?}", uid_sets(&run));
        let scattered: Vec<u32> = (0..5000).map(|i| 4_000_000_000 + 2 * i).collect();
        let sets = uid_sets(&scattered);
        assert!(sets.len() > 1);
        assert!(
            sets.iter().all(|s| s.len() <= 5500),
            "{:?}",
            sets.iter().map(String::len).collect::<Vec<_>>()
        );
        let covered: Vec<u32> = sets
            .iter()
            .flat_map(|s| s.split(','))
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(covered, scattered);
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff {
            attempt: 0,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(10),
        };
        let first = b.next();
        assert!(
            first >= Duration::from_millis(800) && first <= Duration::from_millis(1200),
            "{first:?}"
        );
        for _ in 0..10 {
            b.next();
        }
        let capped = b.next();
        assert!(
            capped <= Duration::from_secs(12) && capped >= Duration::from_secs(8),
            "{capped:?}"
        );
        b.reset();
        assert!(b.next() <= Duration::from_millis(1200));
    }
}
