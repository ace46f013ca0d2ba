//! Every Redis key and channel name deadbolt uses, in one place.
//!
//! All keys of one lock share the hash tag `{name}`, so they land in one Redis Cluster hash slot
//! and a script may touch them together:
//!
//! | what | format | example |
//! |---|---|---|
//! | lock | `{prefix}:{{name}}` | `deadbolt:{movie-likes:42}` |
//! | fencing counter | `{prefix}:{{name}}:fence` | `deadbolt:{movie-likes:42}:fence` |
//! | release channel | `{prefix}:{{name}}:released` | `deadbolt:{movie-likes:42}:released` |
//!
//! The lock key holds the owner's token as a plain string with a `PX` expiry, the layout redsync,
//! node-redlock and redis-py use, so a peer locking the same key is mutually excluded with us.

use crate::error::{Error, Result};

/// The longest lock name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// The key prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "deadbolt";

/// The keys and channel of one lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockKeys {
    /// The key holding the owner's token.
    pub lock: String,
    /// The key holding the last fencing token issued for this name.
    pub fence: String,
    /// The channel a release is published on.
    pub channel: String,
}

impl LockKeys {
    /// Builds the keys of lock `name` under `prefix` (both already validated).
    pub(crate) fn new(prefix: &str, name: &str) -> LockKeys {
        let lock = lock_key(prefix, name);
        LockKeys {
            fence: fence_key(&lock),
            channel: channel(&lock),
            lock,
        }
    }
}

/// The lock key of `name` under `prefix`. An acquisition builds only this one; the others are
/// derived from it when needed (and `release.lua` derives the channel itself).
pub(crate) fn lock_key(prefix: &str, name: &str) -> String {
    // Plain concatenation: this runs once per acquisition, and `format!` costs several times as
    // much.
    let mut lock = String::with_capacity(prefix.len() + name.len() + 3);
    if !prefix.is_empty() {
        lock.push_str(prefix);
        lock.push(':');
    }
    lock.push('{');
    lock.push_str(name);
    lock.push('}');
    lock
}

/// The fencing counter key of the lock at `lock`.
pub(crate) fn fence_key(lock: &str) -> String {
    [lock, ":fence"].concat()
}

/// The release channel of the lock at `lock`.
pub(crate) fn channel(lock: &str) -> String {
    [lock, ":released"].concat()
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag, modulo 16384. Every
/// key of one lock has the same tag, so the same slot.
pub(crate) fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = key
        .find('{')
        .and_then(|open| {
            let close = key[open + 1..].find('}')? + open + 1;
            (close > open + 1).then(|| &bytes[open + 1..close])
        })
        .unwrap_or(bytes);
    let mut crc: u16 = 0;
    for &b in tagged {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// Checks a lock name: non-empty, at most [`MAX_NAME_LEN`] bytes, no `{` or `}` (they would move
/// the lock's keys to different hash slots).
pub(crate) fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("lock name", "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            "lock name",
            format!(
                "is {} bytes long, the maximum is {MAX_NAME_LEN}",
                name.len()
            ),
        ));
    }
    if name.contains(['{', '}']) {
        return Err(Error::invalid(
            "lock name",
            "must not contain '{' or '}': deadbolt adds the hash tag itself",
        ));
    }
    Ok(())
}

/// Checks a key prefix: at most 256 bytes, no `{` or `}`.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.len() > 256 {
        return Err(Error::invalid("key prefix", "the maximum is 256 bytes"));
    }
    if prefix.contains(['{', '}']) {
        return Err(Error::invalid("key prefix", "must not contain '{' or '}'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let k = LockKeys::new("deadbolt", "movie-likes:42");
        assert_eq!(k.lock, "deadbolt:{movie-likes:42}");
        assert_eq!(k.fence, "deadbolt:{movie-likes:42}:fence");
        assert_eq!(k.channel, "deadbolt:{movie-likes:42}:released");
        assert_eq!(LockKeys::new("", "a").lock, "{a}");
    }

    #[test]
    fn slots_follow_the_hash_tag() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot("123456789"), 0x31c3);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("deadbolt:{a}"), slot("deadbolt:{a}:fence"));
        assert_eq!(slot("a{}b"), slot("a{}b"));
    }

    #[test]
    fn bad_names_are_rejected() {
        assert!(validate_name("").is_err());
        assert!(validate_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(validate_name("a{b").is_err());
        assert!(validate_name(&"x".repeat(MAX_NAME_LEN)).is_ok());
        assert!(validate_prefix("app{").is_err());
    }
}
