//! Owner tokens, and what a waiter reads from the token of whoever holds the lock.

use std::time::Duration;

use rand::RngExt;

/// The prefix of every deadbolt owner token, which tells our holders from peers'. `dbt2`: a
/// release publishes only when a waiter marked its token (see `scripts/release.lua`); `dbt1`
/// holders, which compare their token exactly, are never marked and count as peers.
const TOKEN_PREFIX: &str = "dbt2-";

/// What a waiter appends to a holder's owner token (`wait.lua`, `acquire.lua`): a release
/// publishes only when its token was marked, so an uncontended one costs no `PUBLISH`.
const MARK: &str = "+w";

/// A lock key's value without a waiter's mark: the owner token as its holder wrote it. Only
/// deadbolt tokens are ever marked; any other value is returned as it is.
pub(crate) fn unmarked(value: &str) -> &str {
    match value.strip_suffix(MARK) {
        Some(token) if token.starts_with(TOKEN_PREFIX) => token,
        _ => value,
    }
}

/// Who holds the lock, as far as an attempt could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holder {
    /// A deadbolt client: `lease` is how long its key can live at most, the key's remaining TTL
    /// where the reply had it, else the lease in its token (no release message can come later:
    /// the TTL bound). Its release will be published unless it is `quiet` (its user may not
    /// publish: then it is re-checked like a peer).
    Deadbolt { lease: Duration, quiet: bool },
    /// Another library, with the key's remaining TTL in ms (-1: no expiry).
    Peer { pttl: i64 },
    /// The key vanished between the attempt and the look at its TTL: try again at once.
    Gone,
}

impl Holder {
    /// What to wait for when several nodes named holders (a quorum lock): the longest bound
    /// any of them gives, since the lock is free only once a majority of them let go.
    pub(crate) fn longest(self, other: Holder) -> Holder {
        use Holder::*;
        match (self, other) {
            (Gone, h) | (h, Gone) => h,
            (Peer { pttl: a }, Peer { pttl: b }) => Peer {
                pttl: if a < 0 || b < 0 { -1 } else { a.max(b) },
            },
            (p @ Peer { .. }, Deadbolt { .. }) | (Deadbolt { .. }, p @ Peer { .. }) => p,
            (
                Deadbolt {
                    lease: a,
                    quiet: qa,
                },
                Deadbolt {
                    lease: b,
                    quiet: qb,
                },
            ) => Deadbolt {
                lease: a.max(b),
                quiet: qa || qb,
            },
        }
    }
}

/// A fresh owner token: 128 random bits from the thread-local CSPRNG, and the lease, so a waiter
/// that reads the token knows how long to wait at most: `dbt2-<32 hex digits>-<lease in ms>`,
/// with `-q` after it when this client may not publish its releases (`quiet`).
pub(crate) fn new_token(lease: Duration, quiet: bool) -> String {
    // By hand, a byte at a time: `format!("{:032x}")` costs more than the rest of the
    // acquisition's bookkeeping.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let random = rand::rng().random::<u128>().to_be_bytes();
    let mut token = Vec::with_capacity(TOKEN_PREFIX.len() + 32 + 1 + 20);
    token.extend_from_slice(TOKEN_PREFIX.as_bytes());
    for byte in random {
        token.extend_from_slice(&[HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]]);
    }
    token.push(b'-');
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut ms = lease.as_millis() as u64;
    loop {
        at -= 1;
        digits[at] = b'0' + (ms % 10) as u8;
        ms /= 10;
        if ms == 0 {
            break;
        }
    }
    token.extend_from_slice(&digits[at..]);
    if quiet {
        token.extend_from_slice(b"-q");
    }
    // Only ASCII was written.
    String::from_utf8(token).unwrap_or_default()
}

/// Reads a holder's token (`None`: the key is gone; maybe marked by a waiter) and the key's TTL
/// in ms (-2: gone; -1: no expiry, or not known).
pub(crate) fn holder_of(token: Option<&str>, pttl: i64) -> Holder {
    let Some(token) = token.map(unmarked) else {
        return Holder::Gone;
    };
    let lease = token
        .strip_prefix(TOKEN_PREFIX)
        .and_then(|rest| rest.split_once('-'))
        .filter(|(random, _)| random.len() == 32)
        .and_then(|(_, rest)| {
            let (lease, quiet) = match rest.strip_suffix("-q") {
                Some(lease) => (lease, true),
                None => (rest, false),
            };
            Some((lease.parse::<u64>().ok()?, quiet))
        });
    match (lease, pttl) {
        (_, -2) => Holder::Gone,
        (Some((ms, quiet)), pttl) => Holder::Deadbolt {
            // A crashed holder's key may have little of its lease left.
            // At least a millisecond: a key at PTTL 0 expires within it, and a waiter must
            // not spin on it meanwhile.
            lease: Duration::from_millis(match u64::try_from(pttl) {
                Ok(left) => ms.min(left.max(1)),
                Err(_) => ms,
            }),
            quiet,
        },
        (None, pttl) => Holder::Peer { pttl },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_tell_deadbolt_holders_from_peers() {
        let token = new_token(Duration::from_millis(1500), false);
        assert_eq!(token.len(), 5 + 32 + 1 + 4);
        assert!(token.ends_with("-1500"), "{token}");
        assert!(new_token(Duration::ZERO, false).ends_with("-0"));
        assert!(matches!(
            holder_of(Some(&token), 1000),
            Holder::Deadbolt { lease, quiet: false } if lease == Duration::from_millis(1000)
        ));
        assert!(matches!(
            holder_of(Some(&token), -1),
            Holder::Deadbolt { lease, quiet: false } if lease == Duration::from_millis(1500)
        ));
        let quiet = new_token(Duration::from_millis(20), true);
        assert!(matches!(
            holder_of(Some(&quiet), 10),
            Holder::Deadbolt { lease, quiet: true } if lease == Duration::from_millis(10)
        ));
        // redis-py's token is uuid1().hex: 32 hex digits, no prefix.
        let peer = "0123456789abcdef0123456789abcdef";
        assert!(matches!(
            holder_of(Some(peer), -1),
            Holder::Peer { pttl: -1 }
        ));
        assert!(matches!(
            holder_of(Some("dbt2-short-10"), 5),
            Holder::Peer { pttl: 5 }
        ));
        // Marked by a waiter: the same holder.
        assert!(matches!(
            holder_of(Some(&format!("{token}+w")), 2000),
            Holder::Deadbolt { lease, quiet: false } if lease == Duration::from_millis(1500)
        ));
        assert_eq!(unmarked(&format!("{token}+w")), token);
        assert_eq!(unmarked("peer+w"), "peer+w");
        // An older deadbolt's holder is never marked, so it counts as a peer.
        let old = token.replacen("dbt2-", "dbt1-", 1);
        assert!(matches!(holder_of(Some(&old), 5), Holder::Peer { pttl: 5 }));
        assert!(matches!(holder_of(None, 5), Holder::Gone));
        assert!(matches!(holder_of(Some(&token), -2), Holder::Gone));
    }

    #[test]
    fn a_quorum_waits_for_the_longest_holder() {
        let ms = Duration::from_millis;
        let db = |l, quiet| Holder::Deadbolt {
            lease: ms(l),
            quiet,
        };
        assert_eq!(db(10, false).longest(db(30, true)), db(30, true));
        assert_eq!(
            Holder::Gone.longest(Holder::Peer { pttl: 5 }),
            Holder::Peer { pttl: 5 }
        );
        assert_eq!(
            Holder::Peer { pttl: 5 }.longest(Holder::Peer { pttl: -1 }),
            Holder::Peer { pttl: -1 }
        );
        assert_eq!(
            db(10, false).longest(Holder::Peer { pttl: 5 }),
            Holder::Peer { pttl: 5 }
        );
    }
}
