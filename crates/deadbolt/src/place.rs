//! Where a lock lives: on one node, or on a quorum of all of them.
//!
//! A client's [`Mode`] decides it for every name:
//!
//! | mode | nodes | a lock lives on |
//! |---|---|---|
//! | single | 1 | that node |
//! | sharded | N independent | the one node its name hashes to (rendezvous hashing) |
//! | Redlock | N independent masters | all N; held when a majority (N/2 + 1) took it |
//! | Cluster | 1 (a Redis Cluster) | the master of its hash slot, chosen by the cluster client |
//!
//! Everything else (waiting, renewal, the lost signal, release) is the same engine whatever the
//! placement: it asks one node, or asks all and counts votes.

/// How a client spreads its locks over its nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// One server.
    Single,
    /// Each name on one of N independent servers.
    Sharded,
    /// Each name on all N independent masters, held by a majority.
    Redlock,
    /// A Redis Cluster: one node to deadbolt, which routes each lock by its hash slot.
    Cluster,
}

/// The nodes of one lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Placement {
    /// The node at this index holds the lock alone.
    One(usize),
    /// Every node; a majority must agree.
    Quorum,
}

impl Placement {
    /// Where lock `name` lives among the nodes with identities `ids` in `mode` (sharded: by
    /// those identities, see `identity.rs`).
    pub(crate) fn of(mode: Mode, name: &str, ids: &[String]) -> Placement {
        match mode {
            Mode::Single | Mode::Cluster => Placement::One(0),
            Mode::Sharded => Placement::One(rendezvous(name, ids.iter().map(String::as_str))),
            Mode::Redlock => Placement::Quorum,
        }
    }
}

/// The majority of `n` nodes.
pub(crate) fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// The node with the highest score for `name` (highest random weight hashing): each name goes to
/// one node, every client that lists the same addresses (in any order) picks the same one, and
/// adding or removing a node moves only the names that node wins or held, not `(N-1)/N` of all
/// names as `hash % N` does.
fn rendezvous<'a>(name: &str, nodes: impl Iterator<Item = &'a str>) -> usize {
    let mut best = (0, 0u64);
    for (i, node) in nodes.enumerate() {
        let score = mix(fnv1a(
            fnv1a(FNV_OFFSET, node.as_bytes()) ^ 0xff,
            name.as_bytes(),
        ));
        if i == 0 || score > best.1 {
            best = (i, score);
        }
    }
    best.0
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over `bytes`, from `hash`: stable across platforms, processes and Rust versions (which
/// std's `DefaultHasher` does not promise), as placement must be.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// SplitMix64's finalizer: spreads FNV's weak low bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("127.0.0.1:{}", 7000 + i)).collect()
    }

    #[test]
    fn names_spread_evenly_and_do_not_depend_on_list_order() {
        let five = nodes(5);
        let mut reversed = five.clone();
        reversed.reverse();
        let mut counts = [0usize; 5];
        for i in 0..10_000 {
            let name = format!("order:{i}");
            let at = rendezvous(&name, five.iter().map(String::as_str));
            counts[at] += 1;
            assert_eq!(
                reversed[rendezvous(&name, reversed.iter().map(String::as_str))],
                five[at]
            );
        }
        for c in counts {
            assert!((1_700..2_300).contains(&c), "uneven spread: {counts:?}");
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_names() {
        let five = nodes(5);
        let four = five[..4].to_vec();
        for i in 0..5_000 {
            let name = format!("n{i}");
            let before = &five[rendezvous(&name, five.iter().map(String::as_str))];
            let after = &four[rendezvous(&name, four.iter().map(String::as_str))];
            if before != &five[4] {
                assert_eq!(before, after, "{name} moved although its node stayed");
            }
        }
    }

    #[test]
    fn quorum_is_a_majority() {
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(2), 2);
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(5), 3);
    }
}
