//! Where Redis is, and errors a user can act on when it does not answer as it should.
//!
//! `run` and `status` follow `redis-cli`: without `--redis` (or `DEADBOLT_REDIS_URL`) they use
//! `redis://127.0.0.1:6379`, and fail when nothing answers there. A lock is only as good as the
//! Redis every holder shares, so they never fall back to a private server, which would exclude
//! nobody (`bench` and `demo` do start one; see [`crate::embedded`]).

use std::time::Duration;

use deadbolt::{Client, ClientBuilder, redact_url as redact};
use redis::ErrorKind;

use crate::exit::usage;

/// The Redis of `run` and `status` when none is given, as `redis-cli`'s.
pub(crate) const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// How long a command of deadbolt's own (outside the library) waits for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// The URL schemes deadbolt takes.
const SCHEMES: [&str; 5] = ["redis", "rediss", "unix", "redis+unix", "redis+sentinel"];

/// Where the shared Redis server is (`run`, `status`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RedisArgs {
    /// Redis URL: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss://… for TLS,
    /// unix:///PATH, or redis+sentinel://HOST:PORT[,HOST:PORT…]/MASTER_NAME[/DB] for a master
    /// managed by Redis Sentinel [default: redis://127.0.0.1:6379, as redis-cli]
    #[arg(
        long,
        env = "DEADBOLT_REDIS_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub(crate) redis: Option<String>,
}

impl RedisArgs {
    /// The URL to use: `--redis`, else `DEADBOLT_REDIS_URL`, else [`DEFAULT_URL`].
    ///
    /// # Errors
    ///
    /// A usage error for a URL without a scheme deadbolt knows.
    pub(crate) fn resolve(&self) -> anyhow::Result<Redis> {
        resolve(self.redis.as_deref())
    }
}

/// A Redis URL to connect to, and whether it is the default nobody asked for.
#[derive(Debug, Clone)]
pub(crate) struct Redis {
    /// The URL, password included: never print it, print [`redact`]ed.
    pub(crate) url: String,
    /// Whether no URL was given and this is [`DEFAULT_URL`]: errors then say how to give one.
    pub(crate) defaulted: bool,
}

impl Redis {
    /// A URL the user gave.
    ///
    /// # Errors
    ///
    /// A usage error for a URL without a scheme deadbolt knows.
    pub(crate) fn given(url: &str) -> anyhow::Result<Redis> {
        check_url(url)?;
        Ok(Redis {
            url: url.to_owned(),
            defaulted: false,
        })
    }

    /// Whether the URL asks for TLS.
    fn tls(&self) -> bool {
        scheme(&self.url).is_some_and(|s| s.eq_ignore_ascii_case("rediss"))
    }

    /// Connects a client configured by `builder` (which was made from `self.url`), turning a
    /// failure into a message that says what to do.
    ///
    /// # Errors
    ///
    /// Redis is unreachable, refuses the credentials, or is not Redis.
    pub(crate) async fn connect(&self, builder: ClientBuilder) -> anyhow::Result<Client> {
        builder.connect().await.map_err(|err| self.explain(err))
    }

    /// Connects a client with key prefix `prefix` and the library's other defaults.
    ///
    /// # Errors
    ///
    /// As [`Redis::connect`].
    pub(crate) async fn client(&self, prefix: &str) -> anyhow::Result<Client> {
        self.connect(Client::builder(&self.url).key_prefix(prefix))
            .await
    }

    /// `err` as a message a user can act on; the library's own error where it already is one.
    pub(crate) fn explain(&self, err: deadbolt::Error) -> anyhow::Error {
        let deadbolt::Error::Connect { addr, source } = &err else {
            return err.into();
        };
        let scheme = scheme(&self.url).unwrap_or("redis");
        let message = if source.code() == Some("NOAUTH") {
            format!(
                "redis at {addr} requires a password: pass it in the URL, \
                 {scheme}://:PASSWORD@{addr} or {scheme}://USER:PASSWORD@{addr}"
            )
        } else if source.code() == Some("WRONGPASS")
            || source.kind() == ErrorKind::AuthenticationFailed
        {
            format!(
                "redis at {addr} refused the credentials (wrong password, or unknown or disabled \
                 user): check the URL's {scheme}://USER:PASSWORD@{addr}"
            )
        } else if source.is_connection_refusal() {
            let mut message = format!("cannot connect to redis at {addr}: connection refused");
            if self.defaulted {
                message.push_str(&default_hint());
            }
            message
        } else if self.tls()
            && (source.is_timeout() || source.is_connection_dropped() || is_garbled(source))
        {
            format!(
                "no redis answered at {addr} over TLS: is it a plain-text port? then use \
                 redis:// instead of rediss://"
            )
        } else if source.is_connection_dropped() || is_garbled(source) {
            let what = if is_garbled(source) {
                "its reply is not the redis protocol"
            } else {
                "it closed the connection"
            };
            format!(
                "{addr} did not answer like a redis server ({what}): is it the right port? (a \
                 TLS-only redis port needs rediss://)"
            )
        } else if source.is_timeout() {
            let mut message = format!(
                "no answer from {addr} in time: is the host reachable, and a redis server \
                 running there (not paused or overloaded)?"
            );
            if self.defaulted {
                message.push_str(&default_hint());
            }
            message
        } else {
            return err.into();
        };
        anyhow::anyhow!(message)
    }
}

/// What a refused default says: which URL was tried and how to give another.
fn default_hint() -> String {
    format!(
        " (no --redis given, so deadbolt tried the default {DEFAULT_URL}: pass --redis URL or \
         set DEADBOLT_REDIS_URL)"
    )
}

/// Whether the server answered something that is not RESP (another protocol on that port).
fn is_garbled(err: &redis::RedisError) -> bool {
    matches!(
        err.kind(),
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType | ErrorKind::RESP3NotSupported
    )
}

/// `given` (from `--redis` or the environment), else the default.
fn resolve(given: Option<&str>) -> anyhow::Result<Redis> {
    match given.map(str::trim).filter(|url| !url.is_empty()) {
        Some(url) => Redis::given(url),
        None => Ok(Redis {
            url: DEFAULT_URL.to_owned(),
            defaulted: true,
        }),
    }
}

/// The scheme of `url`, if it has one.
fn scheme(url: &str) -> Option<&str> {
    url.split_once("://").map(|(scheme, _)| scheme)
}

/// Refuses a URL whose scheme deadbolt does not take, showing it as typed (password hidden).
fn check_url(url: &str) -> anyhow::Result<()> {
    let valid = "use redis://HOST[:PORT], rediss://HOST[:PORT] (TLS), unix:///PATH or \
                 redis+sentinel://HOST:PORT[,HOST:PORT…]/MASTER_NAME";
    match scheme(url) {
        Some(s) if SCHEMES.iter().any(|known| s.eq_ignore_ascii_case(known)) => Ok(()),
        Some(s) => Err(usage(format!(
            "invalid redis url `{}`: unknown scheme `{s}://`; {valid}",
            redact(url)
        ))),
        None => Err(usage(format!(
            "invalid redis url `{}`: it has no scheme; {valid}, e.g. redis://{}",
            redact(url),
            redact(url)
        ))),
    }
}

/// The Redis type of `key` (`string`, `hash`, …), asked on `client`'s connection.
///
/// # Errors
///
/// Redis failed or did not answer within [`REPLY_TIMEOUT`].
async fn key_type(client: &Client, key: &str) -> anyhow::Result<String> {
    let mut conn = client.connection();
    let mut cmd = redis::cmd("TYPE");
    cmd.arg(key);
    Ok(
        tokio::time::timeout(REPLY_TIMEOUT, cmd.query_async::<String>(&mut conn))
            .await
            .map_err(|_| anyhow::anyhow!("no reply to TYPE {key}"))??,
    )
}

/// The error for a lock key that holds a value of another type: someone else uses that key.
fn wrong_type(key: &str, kind: Option<&str>) -> anyhow::Error {
    let holds = match kind {
        Some(kind) => format!("holds a {kind}"),
        None => "holds a value of another type".to_owned(),
    };
    anyhow::anyhow!(
        "key `{key}` {holds}, not a deadbolt lock: another program uses it; pick another lock \
         name or --key-prefix"
    )
}

/// Turns the library's [`deadbolt::Error::WrongType`] into [`wrong_type`], naming the key's
/// type; any other error as [`Redis::explain`] does.
pub(crate) async fn explain_on(
    redis: &Redis,
    client: &Client,
    err: deadbolt::Error,
) -> anyhow::Error {
    match &err {
        deadbolt::Error::WrongType { key } => {
            let kind = key_type(client, key).await.ok();
            wrong_type(key, kind.as_deref())
        }
        _ => redis.explain(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_url_the_default_is_redis_cli_s() {
        for given in [None, Some(""), Some("  ")] {
            let redis = resolve(given).unwrap();
            assert_eq!(redis.url, "redis://127.0.0.1:6379");
            assert!(redis.defaulted);
        }
        let redis = resolve(Some("redis://10.0.0.5:6380/2")).unwrap();
        assert_eq!(redis.url, "redis://10.0.0.5:6380/2");
        assert!(!redis.defaulted);
    }

    #[test]
    fn every_documented_scheme_is_taken() {
        for url in [
            "redis://h",
            "rediss://:pw@h:1",
            "unix:///run/redis.sock",
            "redis+unix:///run/redis.sock",
            "redis+sentinel://:pw@h1:26379,h2:26379/mymaster",
            "REDIS://h",
        ] {
            assert!(resolve(Some(url)).is_ok(), "{url}");
        }
    }

    #[test]
    fn a_bad_scheme_shows_the_url_as_typed_without_its_password() {
        let err = resolve(Some("http://bob:hunter2@h:1/0")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`http://bob:***@h:1/0`"), "{text}");
        assert!(text.contains("redis://"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let err = resolve(Some("hunter2@10.0.0.5:6379")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`***@10.0.0.5:6379`"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(
            crate::exit::code_of(&err),
            std::process::ExitCode::from(crate::exit::EXIT_USAGE)
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact("rediss://bob:pw@h"), "rediss://bob:***@h");
        assert_eq!(redact("redis://pw@h"), "redis://***@h");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert_eq!(redact("bob:pw@h:1"), "bob:***@h:1");
    }
}
