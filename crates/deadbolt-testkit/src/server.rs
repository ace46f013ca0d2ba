//! The `redis-server` child process and its builder.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use redis::IntoConnectionInfo;

use crate::tls::{self, TlsFiles};
use crate::{NOT_FOUND_MESSAGE, REDIS_SERVER_BIN, port, spawn};

/// How many fresh ports [`RedisServerBuilder::start`] tries before giving up.
const START_ATTEMPTS: usize = 10;
/// How long [`RedisServer::restart`] keeps retrying its fixed port.
const RESTART_BIND_WINDOW: Duration = Duration::from_secs(5);
/// Maximum time a single launch may take to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Delay between readiness probes.
const READY_POLL: Duration = Duration::from_millis(5);
/// Connect timeout used by [`RedisServer::connection`] and the helpers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Read/write timeout on helper connections, so a paused server cannot hang a
/// test forever.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Number of log lines included in start-up errors.
const LOG_TAIL_LINES: usize = 20;
/// Redis' log file name inside the server's temporary directory.
const LOG_FILE: &str = "redis.log";
/// Captures messages printed before the log file is opened (e.g. config
/// errors), which would otherwise be lost.
const STDERR_FILE: &str = "redis.stderr";
/// Name of the config file written by [`RedisServerBuilder::config_file`].
const CONFIG_FILE: &str = "redis.conf";

/// Configures a [`RedisServer`] before starting it.
///
/// Created by [`RedisServer::builder`]; the defaults give a password-less,
/// non-persistent server bound to loopback.
#[derive(Clone, Default)]
pub struct RedisServerBuilder {
    password: Option<String>,
    args: Vec<String>,
    tls: bool,
    /// Contents of a config file passed as the first argument; sentinels need
    /// one they can rewrite.
    config_file: Option<String>,
    /// Where the port comes from.
    ports: PortChoice,
}

/// How [`RedisServerBuilder::start`] picks the client port.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) enum PortChoice {
    /// Any free port the kernel hands out.
    #[default]
    Any,
    /// A port whose cluster bus port (port + 10000) is free too.
    Cluster,
}

impl fmt::Debug for RedisServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServerBuilder")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("args", &self.args)
            .field("tls", &self.tls)
            .field("config_file", &self.config_file)
            .field("ports", &self.ports)
            .finish()
    }
}

impl RedisServerBuilder {
    /// Requires clients to authenticate with `pw` (`--requirepass`), to test
    /// the password-handling paths.
    ///
    /// [`RedisServer::url`] and [`RedisServer::connection`] include it.
    pub fn password(mut self, pw: &str) -> Self {
        self.password = Some(pw.to_owned());
        self
    }

    /// Appends one extra `redis-server` command-line argument, e.g.
    /// `.arg("--enable-debug-command").arg("yes")`, for settings the builder
    /// has no dedicated method for.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Makes clients speak TLS: [`RedisServer::url`] becomes
    /// `rediss://127.0.0.1:PORT`, served with a certificate for `127.0.0.1`
    /// and `localhost` signed by a throwaway CA made for this server alone
    /// ([`RedisServer::ca_cert_path`]). Clients need not present a
    /// certificate (`--tls-auth-clients no`). Needs the `openssl` command,
    /// and a `redis-server` built with TLS (Debian's is).
    ///
    /// The kit's own helpers ([`RedisServer::connection`],
    /// [`keys`](RedisServer::keys), the readiness probe, …) use a second,
    /// plain port on 127.0.0.1 that clients are not told about: that keeps
    /// the kit free of a TLS client, and their results do not depend on the
    /// TLS set-up under test.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Appends several extra arguments, like repeated [`arg`](Self::arg).
    pub(crate) fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Writes `text` to `redis.conf` in the server's directory (once, so a
    /// restart keeps what the server rewrote) and passes it as the config
    /// file, before all other arguments.
    pub(crate) fn config_file(mut self, text: impl Into<String>) -> Self {
        self.config_file = Some(text.into());
        self
    }

    /// Picks the client port with `choice` instead of any free port.
    pub(crate) fn port_choice(mut self, choice: PortChoice) -> Self {
        self.ports = choice;
        self
    }

    /// Starts the server on a free loopback port and waits until it answers
    /// `PING`.
    ///
    /// Retries on a fresh port when another process took the chosen one
    /// first.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] when `redis-server` (or, for
    /// [`tls`](Self::tls), `openssl`) is not on `PATH`; otherwise an error
    /// including the tail of the server log when it exits or does not become
    /// ready within 10 s.
    pub fn start(self) -> io::Result<RedisServer> {
        let dir = tempfile::Builder::new()
            .prefix("deadbolt-redis-")
            .tempdir()?;
        let tls = if self.tls {
            Some(tls::generate(dir.path())?)
        } else {
            None
        };
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let client = match self.ports {
                PortChoice::Any => port::free_port()?,
                PortChoice::Cluster => port::free_cluster_port()?,
            };
            let helper = if tls.is_some() {
                // Two calls may hand out the same port once the first is closed.
                loop {
                    let p = port::free_port()?;
                    if p != client {
                        break p;
                    }
                }
            } else {
                client
            };
            let ports = Ports { client, helper };
            match launch(&self, ports, tls.as_ref(), dir.path()) {
                Ok(child) => {
                    return Ok(RedisServer {
                        pid: child.id(),
                        child: Some(child),
                        ports,
                        tls,
                        config: self,
                        dir,
                    });
                }
                Err(LaunchError::AddrInUse(e)) => last_error = Some(e),
                Err(LaunchError::Fatal(e)) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }
}

/// A running `redis-server` child process, killed when dropped.
///
/// Each server has its own port and temporary directory (holding
/// `redis.log`), no persistence, and accepts connections on 127.0.0.1 only.
/// The query helpers ([`keys`](Self::keys), [`command_calls`](Self::command_calls),
/// [`reset_stats`](Self::reset_stats)) panic on failure because they are meant
/// for test assertions.
pub struct RedisServer {
    child: Option<Child>,
    pid: u32,
    ports: Ports,
    tls: Option<TlsFiles>,
    config: RedisServerBuilder,
    dir: tempfile::TempDir,
}

/// The ports one server listens on.
#[derive(Debug, Clone, Copy)]
struct Ports {
    /// What clients dial: the plain port, or the TLS port of a TLS server.
    client: u16,
    /// A plain port for the kit's own helpers; the same as `client` unless TLS.
    helper: u16,
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("ports", &self.ports)
            .field("tls", &self.tls)
            .field("pid", &self.pid)
            .field("running", &self.child.is_some())
            .field("dir", &self.dir.path())
            .field("config", &self.config)
            .finish()
    }
}

impl RedisServer {
    /// Starts a server with default settings; shorthand for
    /// `RedisServer::builder().start()`.
    ///
    /// # Errors
    ///
    /// See [`RedisServerBuilder::start`].
    pub fn start() -> io::Result<RedisServer> {
        Self::builder().start()
    }

    /// Returns a builder, for servers that need a password or extra
    /// arguments.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// The loopback TCP port clients dial (the TLS port of a
    /// [TLS](RedisServerBuilder::tls) server); stays the same across
    /// [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.ports.client
    }

    /// Process id of the current (or most recent) `redis-server` process;
    /// changes on [`restart`](Self::restart).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Connection URL for clients: `redis://127.0.0.1:PORT`, or
    /// `redis://:PASSWORD@127.0.0.1:PORT` (percent-encoded) when a password is
    /// set; the scheme is `rediss://` for a [TLS](RedisServerBuilder::tls)
    /// server.
    pub fn url(&self) -> String {
        self.url_to(&self.addr())
    }

    /// `127.0.0.1:PORT`, for code that takes a socket address rather than a
    /// URL.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    /// The PEM file of the certificate authority that signed a
    /// [TLS](RedisServerBuilder::tls) server's certificate, for clients to
    /// trust; `None` for a plain server. Every TLS server has a CA of its own.
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_cert.as_path())
    }

    /// Creates (or redefines) the ACL user `name` with password `password`
    /// and the ACL `rules` (`ACL SETUSER name on >password rules…`), and
    /// returns a URL that logs in as that user, like [`url`](Self::url) but
    /// with `name:password@` (percent-encoded).
    ///
    /// A new user starts with no rights, so `rules` grants them, e.g.
    /// `&["~*", "+@all"]`. Redis 7 starts users without channel rights
    /// (`acl-pubsub-default resetchannels`), so that user can neither
    /// `PUBLISH` nor `SUBSCRIBE`; add `"&*"` to allow every channel.
    ///
    /// # Panics
    ///
    /// When Redis rejects the command (an invalid rule) or cannot be reached;
    /// this is a test helper.
    pub fn acl_user(&self, name: &str, password: &str, rules: &[&str]) -> String {
        self.query::<()>(
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg(name)
                .arg("on")
                .arg(format!(">{password}"))
                .arg(rules),
        );
        build_url(self.scheme(), Some(name), Some(password), &self.addr())
    }

    /// The URL of [`url`](Self::url) (scheme, password) with `addr` as the
    /// address, for a proxy in front of this server.
    pub(crate) fn url_to(&self, addr: &str) -> String {
        build_url(self.scheme(), None, self.config.password.as_deref(), addr)
    }

    /// `rediss` for a TLS server, else `redis`.
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        }
    }

    /// Opens an authenticated synchronous connection with 2 s read/write
    /// timeouts, so a paused server makes commands fail instead of hanging.
    ///
    /// Skips redis-rs's `CLIENT SETINFO` handshake so it does not show up in
    /// [`command_calls`](Self::command_calls). For a
    /// [TLS](RedisServerBuilder::tls) server, it connects to the plain helper
    /// port instead.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached; this is a test helper.
    pub fn connection(&self) -> redis::Connection {
        connect(&helper_url(&self.config, self.ports)).unwrap_or_else(|e| {
            panic!(
                "cannot connect to redis-server at 127.0.0.1:{}: {e}",
                self.ports.helper
            )
        })
    }

    /// Kills the server with `SIGKILL` and reaps it, to simulate a crash.
    ///
    /// Does nothing when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only if the child was already reaped, which `take` rules out.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server with `SIGSTOP`, to simulate a stalled node: it keeps
    /// accepting TCP connections but answers nothing until
    /// [`resume`](Self::resume).
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Continues a server frozen by [`pause`](Self::pause) (`SIGCONT`).
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    /// Kills the server if it is running and starts it again on the same port
    /// and directory with the same arguments, waiting until it answers `PING`.
    ///
    /// Data is lost (no persistence), which is what lock-safety tests need.
    ///
    /// # Errors
    ///
    /// When the port stays taken for 5 s or the server fails to start.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        let deadline = Instant::now() + RESTART_BIND_WINDOW;
        loop {
            match launch(&self.config, self.ports, self.tls.as_ref(), self.dir.path()) {
                Ok(child) => {
                    self.pid = child.id();
                    self.child = Some(child);
                    return Ok(());
                }
                Err(LaunchError::AddrInUse(e)) if Instant::now() >= deadline => return Err(e),
                Err(LaunchError::AddrInUse(_)) => thread::sleep(Duration::from_millis(20)),
                Err(LaunchError::Fatal(e)) => return Err(e),
            }
        }
    }

    /// Reports whether the process is still alive (a paused server counts as
    /// running). Reaps it if it has exited.
    pub fn is_running(&mut self) -> bool {
        let Some(child) = &mut self.child else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(_)) | Err(_) => {
                self.child = None;
                false
            }
        }
    }

    /// Per-command call counts from `INFO commandstats`, keyed by lowercase
    /// command name (`"evalsha"`, `"client|setname"`), so tests can assert how
    /// many round trips an operation made.
    ///
    /// # Panics
    ///
    /// When the server cannot be queried.
    pub fn command_calls(&self) -> BTreeMap<String, u64> {
        let info: String = self.query(redis::cmd("INFO").arg("commandstats"));
        parse_command_calls(&info)
    }

    /// All keys currently stored, sorted, to check what an operation left
    /// behind.
    ///
    /// # Panics
    ///
    /// When the server cannot be queried.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.query(redis::cmd("KEYS").arg("*"));
        keys.sort();
        keys
    }

    /// Zeroes the server statistics (`CONFIG RESETSTAT`), so
    /// [`command_calls`](Self::command_calls) counts only what follows.
    ///
    /// # Panics
    ///
    /// When the server cannot be queried.
    pub fn reset_stats(&self) {
        self.query::<()>(redis::cmd("CONFIG").arg("RESETSTAT"));
    }

    /// Like [`connection`](Self::connection), but returns the error, for
    /// polling a node that may be down.
    pub(crate) fn try_connection(&self) -> redis::RedisResult<redis::Connection> {
        connect(&helper_url(&self.config, self.ports))
    }

    /// Runs one command on a fresh connection, returning any error.
    pub(crate) fn try_query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        cmd.query(&mut self.try_connection()?)
    }

    /// The last lines of this server's log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        read_tail(&self.dir.path().join(LOG_FILE), 0)
    }

    /// Runs one command on a fresh connection, panicking on failure.
    fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let mut conn = self.connection();
        cmd.query(&mut conn)
            .unwrap_or_else(|e| panic!("redis-server at {} failed a query: {e}", self.addr()))
    }

    /// Sends `sig` to the live child; never to a reaped pid, which the kernel
    /// may have reused.
    fn signal(&self, sig: Signal) {
        if let Some(child) = &self.child {
            let pid = Pid::from_raw(child.id().cast_signed());
            // ESRCH cannot happen before reaping; nothing useful to do otherwise.
            let _ = signal::kill(pid, sig);
        }
    }
}

impl Drop for RedisServer {
    /// Kills and reaps the process; the temporary directory is removed when
    /// the `dir` field drops afterwards.
    fn drop(&mut self) {
        self.kill();
    }
}

/// Why a single launch attempt failed.
enum LaunchError {
    /// The port was taken; worth retrying.
    AddrInUse(io::Error),
    /// Anything else; retrying would not help.
    Fatal(io::Error),
}

/// Starts `redis-server` on `ports` and waits until it answers `PING`.
fn launch(
    config: &RedisServerBuilder,
    ports: Ports,
    tls: Option<&TlsFiles>,
    dir: &Path,
) -> Result<Child, LaunchError> {
    let port = ports.client;
    let log_path = dir.join(LOG_FILE);
    let stderr_path = dir.join(STDERR_FILE);
    // Logs are appended across launches; remember where this one starts.
    let log_start = file_len(&log_path);
    let stderr_start = file_len(&stderr_path);
    let stderr = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&stderr_path)
        .map_err(LaunchError::Fatal)?;

    let mut command = Command::new(REDIS_SERVER_BIN);
    if let Some(text) = &config.config_file {
        let path = dir.join(CONFIG_FILE);
        if !path.exists() {
            fs::write(&path, text).map_err(LaunchError::Fatal)?;
        }
        command.arg(path);
    }
    command.arg("--port").arg(ports.helper.to_string());
    if let Some(tls) = tls {
        command
            .arg("--tls-port")
            .arg(port.to_string())
            .arg("--tls-cert-file")
            .arg(&tls.cert)
            .arg("--tls-key-file")
            .arg(&tls.key)
            .arg("--tls-ca-cert-file")
            .arg(&tls.ca_cert)
            .args(["--tls-auth-clients", "no"]);
    }
    command
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(["--daemonize", "no"])
        .arg("--logfile")
        .arg(&log_path)
        .args(["--protected-mode", "yes"]);
    if let Some(pw) = &config.password {
        command.arg("--requirepass").arg(pw);
    }
    command
        .args(&config.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);

    let mut child = spawn::spawn_tied_to_process(command).map_err(|e| {
        LaunchError::Fatal(if e.kind() == io::ErrorKind::NotFound {
            io::Error::new(io::ErrorKind::NotFound, NOT_FOUND_MESSAGE)
        } else {
            io::Error::new(e.kind(), format!("cannot spawn redis-server: {e}"))
        })
    })?;

    // Redis opens every listener before it serves anyone, and exits when one
    // fails: a PING answered on the helper port means the TLS port is up too.
    let url = helper_url(config, ports);
    let log_tail = || {
        let mut tail = read_tail(&stderr_path, stderr_start);
        tail.push_str(&read_tail(&log_path, log_start));
        tail
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let tail = log_tail();
            let error = io::Error::other(format!(
                "redis-server on port {port} exited during start-up ({status}); log tail:\n{tail}"
            ));
            return Err(if tail.contains("Address already in use") {
                LaunchError::AddrInUse(error)
            } else {
                LaunchError::Fatal(error)
            });
        }
        if let Ok(mut conn) = connect(&url)
            && redis::cmd("PING").query::<String>(&mut conn).is_ok()
        {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LaunchError::Fatal(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "redis-server on port {port} not ready after {READY_TIMEOUT:?}; log tail:\n{}",
                    log_tail()
                ),
            )));
        }
        thread::sleep(READY_POLL);
    }
}

/// The plain URL of the kit's helpers, with the default user's password.
fn helper_url(config: &RedisServerBuilder, ports: Ports) -> String {
    let addr = format!("127.0.0.1:{}", ports.helper);
    build_url("redis", None, config.password.as_deref(), &addr)
}

/// `scheme://[user][:password@]addr`, percent-encoding the credentials.
fn build_url(scheme: &str, user: Option<&str>, password: Option<&str>, addr: &str) -> String {
    let user = user.map(percent_encode).unwrap_or_default();
    match password {
        Some(pw) => format!("{scheme}://{user}:{}@{addr}", percent_encode(pw)),
        None if user.is_empty() => format!("{scheme}://{addr}"),
        None => format!("{scheme}://{user}@{addr}"),
    }
}

/// Connects to `url` with the testkit's timeouts and without `CLIENT SETINFO`.
fn connect(url: &str) -> redis::RedisResult<redis::Connection> {
    let info = url.into_connection_info()?;
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    let client = redis::Client::open(info.set_redis_settings(settings))?;
    let conn = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}

/// Parses `INFO commandstats` lines such as
/// `cmdstat_evalsha:calls=3,usec=...` into `{"evalsha": 3}`.
fn parse_command_calls(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so any
/// password survives the URL (redis-rs decodes it again).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Current length of `path`, or 0 when it does not exist yet.
fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// The last [`LOG_TAIL_LINES`] lines of `path` written after byte `start`.
fn read_tail(path: &Path, start: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path)
        && file.seek(SeekFrom::Start(start)).is_ok()
    {
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[skip..].iter().map(|l| format!("{l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commandstats() {
        let info = "# Commandstats\r\n\
            cmdstat_set:calls=1,usec=5,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_evalsha:calls=3,usec=9,usec_per_call=3.00,rejected_calls=0,failed_calls=1\r\n\
            cmdstat_client|setname:calls=2,usec=1\r\n";
        let calls = parse_command_calls(info);
        assert_eq!(calls.len(), 3);
        assert_eq!(calls["set"], 1);
        assert_eq!(calls["evalsha"], 3);
        assert_eq!(calls["client|setname"], 2);
    }

    #[test]
    fn encodes_password_for_url() {
        assert_eq!(percent_encode("a-Z_9.~"), "a-Z_9.~");
        assert_eq!(percent_encode("p@ss:w/rd%"), "p%40ss%3Aw%2Frd%25");
    }

    #[test]
    fn builds_urls() {
        let addr = "127.0.0.1:7";
        assert_eq!(build_url("redis", None, None, addr), "redis://127.0.0.1:7");
        assert_eq!(
            build_url("rediss", None, Some("p@ss"), addr),
            "rediss://:p%40ss@127.0.0.1:7"
        );
        assert_eq!(
            build_url("redis", Some("b b"), Some("pw"), addr),
            "redis://b%20b:pw@127.0.0.1:7"
        );
        assert_eq!(
            build_url("redis", Some("bob"), None, addr),
            "redis://bob@127.0.0.1:7"
        );
    }

    #[test]
    fn drop_removes_temp_dir() {
        let server = RedisServer::start().expect("start redis-server");
        let dir = server.dir.path().to_owned();
        assert!(dir.join(LOG_FILE).exists());
        drop(server);
        assert!(!dir.exists());
    }

    #[test]
    fn config_error_is_reported_with_log_tail() {
        let err = RedisServer::builder()
            .arg("--no-such-option")
            .arg("x")
            .start()
            .expect_err("bad option must fail");
        assert!(err.to_string().contains("no-such-option"), "{err}");
    }
}
