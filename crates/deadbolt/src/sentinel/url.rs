//! Parsing `redis+sentinel://` URLs, and making one for [`Client::sentinel`](crate::Client::sentinel).

use crate::client::redact_url;
use crate::error::{Error, Result};

/// The scheme of a Sentinel URL.
pub(crate) const SCHEME: &str = "redis+sentinel://";

/// The port of a Sentinel given without one.
const DEFAULT_PORT: u16 = 26379;

const EXPECTED: &str =
    "expected redis+sentinel://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]…]/MASTER_NAME[/DB]";

/// Whether `url` names a Sentinel-managed master.
pub(crate) fn is_sentinel_url(url: &str) -> bool {
    url.get(..SCHEME.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(SCHEME))
}

/// A parsed `redis+sentinel://` URL.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SentinelUrl {
    /// The Sentinels' host and port, in the order given.
    pub(crate) sentinels: Vec<(String, u16)>,
    /// The name the Sentinels monitor the master under.
    pub(crate) master: String,
    pub(crate) db: i64,
    /// The master's credentials (the Sentinels get none).
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
}

impl std::fmt::Debug for SentinelUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelUrl")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Parses `redis+sentinel://[user:password@]host1:port1[,host2:port2,…]/MASTER_NAME[/db]`. The
/// error never shows the password.
pub(crate) fn parse(url: &str) -> Result<SentinelUrl> {
    let bad = |why: &str| {
        Error::invalid(
            "redis url",
            format!("`{}`: {why}; {EXPECTED}", redact_url(url)),
        )
    };
    if !is_sentinel_url(url) {
        return Err(bad("not a sentinel url"));
    }
    let rest = &url[SCHEME.len()..];
    if rest.contains(['?', '#']) {
        return Err(bad("query parameters are not supported"));
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(userinfo) => {
            // `user:password`, `:password`, or a lone word, which redis-rs reads as a password.
            let (user, pass) = match userinfo.split_once(':') {
                Some((user, pass)) => (user, Some(pass)),
                None => ("", Some(userinfo)),
            };
            let decode = |s: &str| percent_decode(s).ok_or_else(|| bad("bad percent-encoding"));
            let user = Some(decode(user)?).filter(|u| !u.is_empty());
            let pass = pass.map(decode).transpose()?.filter(|p| !p.is_empty());
            (user, pass)
        }
    };
    let mut sentinels = Vec::new();
    for host in hosts.split(',') {
        sentinels.push(parse_host(host).map_err(|why| bad(&why))?);
    }
    let mut segments = path.trim_start_matches('/').split('/');
    let master = segments.next().unwrap_or("");
    if master.is_empty() {
        return Err(bad("no master name"));
    }
    let master = percent_decode(master).ok_or_else(|| bad("bad percent-encoding"))?;
    let db = match segments.next() {
        None | Some("") => 0,
        Some(db) => db
            .parse::<i64>()
            .ok()
            .filter(|d| *d >= 0)
            .ok_or_else(|| bad(&format!("`{db}` is not a database number")))?,
    };
    if segments.any(|s| !s.is_empty()) {
        return Err(bad("too many path segments"));
    }
    Ok(SentinelUrl {
        sentinels,
        master,
        db,
        username,
        password,
    })
}

/// `host[:port]` or `[v6]:port`; the port defaults to 26379.
fn parse_host(host: &str) -> std::result::Result<(String, u16), String> {
    if host.is_empty() {
        return Err("an empty sentinel address".to_owned());
    }
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        let (name, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{host}` lacks a `]`"))?;
        (name, after.strip_prefix(':'))
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if name.is_empty() {
        return Err(format!("`{host}` has no host name"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{host}` has a bad port"))?,
    };
    Ok((name.to_owned(), port))
}

/// Decodes `%XX` escapes; `None` for a malformed one or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// The Sentinel URL for [`Client::sentinel`](crate::Client::sentinel): each entry is
/// `host:port` or `redis://host:port`.
pub(crate) fn url_of(sentinels: &[String], master: &str) -> String {
    let hosts: Vec<&str> = sentinels
        .iter()
        .map(|s| {
            let s = s.trim();
            let s = s.split_once("://").map_or(s, |(_, rest)| rest);
            s.trim_end_matches('/')
        })
        .collect();
    format!("{SCHEME}{}/{master}", hosts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_parse() {
        let url = parse("redis+sentinel://bob:p%40ss@h1:1,[::1]:2,h3/mymaster/3").unwrap();
        assert_eq!(
            url.sentinels,
            [
                ("h1".to_owned(), 1),
                ("::1".to_owned(), 2),
                ("h3".to_owned(), DEFAULT_PORT)
            ]
        );
        assert_eq!(url.master, "mymaster");
        assert_eq!(url.db, 3);
        assert_eq!(url.username.as_deref(), Some("bob"));
        assert_eq!(url.password.as_deref(), Some("p@ss"));
        let bare = parse("REDIS+SENTINEL://h:5/m").unwrap();
        assert_eq!((bare.db, bare.username, bare.password), (0, None, None));
        assert_eq!(
            parse("redis+sentinel://pw@h/m")
                .unwrap()
                .password
                .as_deref(),
            Some("pw")
        );
    }

    #[test]
    fn bad_sentinel_urls_are_refused_without_the_password() {
        for (url, why) in [
            ("redis+sentinel://:hunter2@h:1", "no master name"),
            ("redis+sentinel://:hunter2@h:1/", "no master name"),
            ("redis+sentinel://:hunter2@/m", "empty sentinel address"),
            (
                "redis+sentinel://:hunter2@h:1,,h:2/m",
                "empty sentinel address",
            ),
            ("redis+sentinel://:hunter2@h:x/m", "bad port"),
            ("redis+sentinel://:hunter2@h:0/m", "bad port"),
            ("redis+sentinel://:hunter2@h:1/m/x", "not a database number"),
            (
                "redis+sentinel://:hunter2@h:1/m/1/2",
                "too many path segments",
            ),
            ("redis+sentinel://:hunter2@h:1/m?x=1", "query parameters"),
            ("redis+sentinel://:hunter2@[::1/m", "lacks a `]`"),
            ("redis+sentinel://:hunter2%zz@h/m", "percent-encoding"),
        ] {
            let err = parse(url).unwrap_err().to_string();
            assert!(err.contains(why), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{url}: {err}");
            assert!(err.contains("redis+sentinel://"), "{url}: {err}");
        }
    }

    #[test]
    fn builder_form_makes_a_url() {
        let url = url_of(
            &["redis://127.0.0.1:1".to_owned(), " h:2/ ".to_owned()],
            "mymaster",
        );
        assert_eq!(url, "redis+sentinel://127.0.0.1:1,h:2/mymaster");
        assert_eq!(parse(&url).unwrap().sentinels.len(), 2);
    }
}
