//! What the bench asks the server itself: command counts, round trip times, a MONITOR census,
//! and the cleanup.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo as _};
use tokio::sync::oneshot;

use super::report::Ideal;

/// Commands the bench itself sends around a measurement, and a cluster's replicas' `REPLCONF
/// ACK`s to their masters, which are no lock's cost.
const EXCLUDED: &[&str] = &["info", "config", "config|resetstat", "ping", "replconf"];
/// PINGs averaged for the round trip time.
const RTT_SAMPLES: u32 = 300;
/// Time budget for the GET + hold + SET samples of the ideal (at least 3 are taken).
const SECTION_BUDGET: Duration = Duration::from_millis(500);
/// Keys per `DEL` in the cleanup.
const DEL_CHUNK: usize = 500;
/// How long the census's connection may take for any one step (connect, a reply, a line).
const CENSUS_IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the census may run in all; it normally ends at its end marker long before.
const CENSUS_MAX: Duration = Duration::from_secs(15);

/// Calls per command name, as `INFO commandstats` or the census counts them.
#[derive(Debug, Clone, Default)]
pub(crate) struct CommandCounts(BTreeMap<String, u64>);

impl CommandCounts {
    /// Parses `INFO commandstats`: lines `cmdstat_<name>:calls=N,usec=…`.
    fn parse(info: &str) -> CommandCounts {
        let mut counts = CommandCounts::default();
        for line in info.lines() {
            let Some((name, fields)) = line
                .trim()
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let calls = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(calls) = calls {
                counts.count(name, calls);
            }
        }
        counts
    }

    /// Adds `n` calls of `name`, unless it is one of the bench's own commands.
    fn count(&mut self, name: &str, n: u64) {
        let name = name.to_ascii_lowercase();
        if !EXCLUDED.contains(&name.as_str()) {
            *self.0.entry(name).or_default() += n;
        }
    }

    /// The calls made since `before`.
    fn since(mut self, before: &CommandCounts) -> CommandCounts {
        for (name, calls) in &mut self.0 {
            *calls = calls.saturating_sub(before.0.get(name).copied().unwrap_or(0));
        }
        self.0.retain(|_, calls| *calls > 0);
        self
    }

    /// Takes out W2's counter `GET`s and `SET`s, which are the workload's, not the lock's.
    pub(crate) fn without_counter(mut self, gets: u64, sets: u64) -> CommandCounts {
        for (name, n) in [("get", gets), ("set", sets)] {
            if let Some(calls) = self.0.get_mut(name) {
                *calls = calls.saturating_sub(n);
            }
        }
        self.0.retain(|_, calls| *calls > 0);
        self
    }

    /// Adds `other`'s calls (another round) into `self`.
    pub(crate) fn add(&mut self, other: &CommandCounts) {
        for (name, calls) in &other.0 {
            *self.0.entry(name.clone()).or_default() += calls;
        }
    }

    /// All calls.
    pub(crate) fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// `(name, calls / ops)`, most calls first.
    pub(crate) fn per_op(&self, ops: u64) -> Vec<(String, f64)> {
        let mut rows: Vec<_> = self
            .0
            .iter()
            .map(|(name, &calls)| (name.clone(), calls as f64 / ops.max(1) as f64))
            .collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rows
    }
}

/// What the census saw: commands clients sent, and commands Lua scripts ran.
#[derive(Debug, Clone, Default)]
pub(crate) struct CensusCounts {
    /// Commands sent by clients (one round trip each, unless pipelined).
    pub(crate) top: CommandCounts,
    /// Commands run by scripts (`redis.call`).
    pub(crate) script: CommandCounts,
}

/// The bench's own connection to the server, apart from every workload's.
#[derive(Debug, Clone)]
pub(crate) struct ServerStats {
    /// The connection.
    conn: ConnectionManager,
    /// Whether statistics may be reset (our private server) or must be diffed (a shared one,
    /// whose operators may be watching its statistics).
    reset: bool,
}

impl ServerStats {
    /// Connects; `reset` as in [`ServerStats::reset`].
    pub(crate) async fn connect(url: &str, reset: bool) -> anyhow::Result<ServerStats> {
        let client = redis::Client::open(url).context("invalid redis url")?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .context("cannot connect to redis")?;
        Ok(ServerStats { conn, reset })
    }

    /// Starts counting commands: `CONFIG RESETSTAT`, or a snapshot to subtract later.
    pub(crate) async fn begin(&mut self) -> anyhow::Result<CommandCounts> {
        if self.reset {
            let () = redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query_async(&mut self.conn)
                .await
                .context("CONFIG RESETSTAT failed")?;
            Ok(CommandCounts::default())
        } else {
            self.snapshot().await
        }
    }

    /// The commands run since [`ServerStats::begin`] returned `before`.
    pub(crate) async fn end(&mut self, before: CommandCounts) -> anyhow::Result<CommandCounts> {
        Ok(self.snapshot().await?.since(&before))
    }

    /// `INFO commandstats`, parsed.
    async fn snapshot(&mut self) -> anyhow::Result<CommandCounts> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.conn)
            .await
            .context("INFO commandstats failed")?;
        Ok(CommandCounts::parse(&info))
    }

    /// Deletes `keys`.
    pub(crate) async fn delete(&mut self, keys: &[String]) -> anyhow::Result<()> {
        for chunk in keys.chunks(DEL_CHUNK) {
            let _: i64 = redis::cmd("DEL")
                .arg(chunk)
                .query_async(&mut self.conn)
                .await
                .context("DEL failed")?;
        }
        Ok(())
    }
}

/// Measures W2's ideal on an idle `conn`: the mean PING round trip, and the mean GET + hold +
/// SET on `key`, with the hold as actually slept (tokio timers round up to the millisecond).
pub(crate) async fn probe_ideal(
    conn: &mut deadbolt::Connection,
    key: &str,
    hold: Duration,
) -> anyhow::Result<Ideal> {
    let start = Instant::now();
    for _ in 0..RTT_SAMPLES {
        let _: String = redis::cmd("PING").query_async(conn).await?;
    }
    let rtt = start.elapsed() / RTT_SAMPLES;

    let per_sample = hold + Duration::from_millis(1);
    let samples = (SECTION_BUDGET.as_micros() / per_sample.as_micros()).clamp(3, 100) as u32;
    let start = Instant::now();
    for _ in 0..samples {
        let value: Option<i64> = redis::cmd("GET").arg(key).query_async(conn).await?;
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        let () = redis::cmd("SET")
            .arg(key)
            .arg(value.unwrap_or(0) + 1)
            .query_async(conn)
            .await?;
    }
    let section = start.elapsed() / samples;
    Ok(Ideal {
        ops_per_s: 1.0 / (section + rtt).as_secs_f64(),
        rtt_us: rtt.as_secs_f64() * 1e6,
        section_us: section.as_secs_f64() * 1e6,
    })
}

/// A MONITOR connection counting commands until an end marker goes by.
///
/// Redis counts commands run inside scripts in `INFO commandstats` like any other, so only
/// MONITOR, which tags them `[db lua]`, can tell them apart. It runs on a plain blocking socket
/// in its own thread: the redis crate's monitor stream needs a futures dependency the CLI does
/// not have, and a detached thread never holds up the runtime's shutdown.
#[derive(Debug)]
pub(crate) struct Census {
    /// The key the end marker (`EXISTS`) names.
    marker: String,
    /// The counts, once the thread saw the marker.
    result: oneshot::Receiver<anyhow::Result<CensusCounts>>,
}

impl Census {
    /// Connects and starts MONITOR; returns once the server confirmed it. Lines mentioning any
    /// of `ignore` are not counted.
    pub(crate) async fn start(url: &str, ignore: Vec<String>) -> anyhow::Result<Census> {
        let info = url.into_connection_info().context("invalid redis url")?;
        let (host, port) = match info.addr() {
            ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
            _ => bail!("the census needs a plain tcp connection"),
        };
        let settings = info.redis_settings();
        let auth: Option<Vec<String>> = settings.password().map(|password| {
            let mut cmd = vec!["AUTH".to_owned()];
            cmd.extend(settings.username().map(str::to_owned));
            cmd.push(password.to_owned());
            cmd
        });
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let marker = format!(
            "{}:census-end:{}:{nanos}",
            super::PREFIX,
            std::process::id()
        );
        let (ready_tx, ready_rx) = oneshot::channel();
        let (result_tx, result_rx) = oneshot::channel();
        let thread_marker = marker.clone();
        std::thread::Builder::new()
            .name("bench-census".to_owned())
            .spawn(move || {
                let mut ready = Some(ready_tx);
                let result = monitor(&host, port, auth, &thread_marker, &ignore, &mut ready);
                match (ready.take(), result) {
                    // Failed before MONITOR was on: the starter hears it.
                    (Some(ready), Err(err)) => {
                        let _ = ready.send(Err(err));
                    }
                    (_, result) => {
                        let _ = result_tx.send(result);
                    }
                }
            })
            .context("cannot start the census thread")?;
        tokio::time::timeout(CENSUS_IO_TIMEOUT * 3, ready_rx)
            .await
            .map_err(|_| anyhow!("MONITOR did not start in time"))?
            .map_err(|_| anyhow!("the census thread ended early"))??;
        Ok(Census {
            marker,
            result: result_rx,
        })
    }

    /// Sends the end marker on `conn` and returns the counts.
    pub(crate) async fn finish(self, stats: &ServerStats) -> anyhow::Result<CensusCounts> {
        let _: i64 = redis::cmd("EXISTS")
            .arg(&self.marker)
            .query_async(&mut stats.conn.clone())
            .await
            .context("cannot send the census's end marker")?;
        tokio::time::timeout(CENSUS_MAX, self.result)
            .await
            .map_err(|_| anyhow!("the census did not see its end marker"))?
            .map_err(|_| anyhow!("the census thread ended early"))?
    }
}

/// The census thread: MONITOR on `host:port` until `marker`, counting commands. `ready` is
/// answered (and emptied) once MONITOR is on.
fn monitor(
    host: &str,
    port: u16,
    auth: Option<Vec<String>>,
    marker: &str,
    ignore: &[String],
    ready: &mut Option<oneshot::Sender<anyhow::Result<()>>>,
) -> anyhow::Result<CensusCounts> {
    let addr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow!("{host} has no address"))?;
    let stream = TcpStream::connect_timeout(&addr, CENSUS_IO_TIMEOUT)?;
    stream.set_read_timeout(Some(CENSUS_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(CENSUS_IO_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let mut command = |args: &[String], reader: &mut BufReader<TcpStream>| -> anyhow::Result<()> {
        writer.write_all(&resp(args))?;
        line.clear();
        reader.read_until(b'\n', &mut line)?;
        if !line.starts_with(b"+") {
            bail!(
                "{} refused: {}",
                args[0],
                String::from_utf8_lossy(&line).trim()
            );
        }
        Ok(())
    };
    if let Some(auth) = auth {
        command(&auth, &mut reader)?;
    }
    command(&["MONITOR".to_owned()], &mut reader)?;
    if let Some(ready) = ready.take() {
        let _ = ready.send(Ok(()));
    }

    let deadline = Instant::now() + CENSUS_MAX;
    let mut counts = CensusCounts::default();
    let mut line = Vec::new();
    while Instant::now() < deadline {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            bail!("the server closed the MONITOR connection");
        }
        // Arguments are printed escaped, so the line is ASCII.
        let text = String::from_utf8_lossy(&line);
        if text.contains(marker) {
            return Ok(counts);
        }
        if ignore.iter().any(|s| text.contains(s.as_str())) {
            continue;
        }
        if let Some((name, in_script)) = parse_monitor_line(&text) {
            let target = if in_script {
                &mut counts.script
            } else {
                &mut counts.top
            };
            target.count(name, 1);
        }
    }
    bail!("the census did not see its end marker")
}

/// A command as RESP.
fn resp(args: &[String]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend(format!("${}\r\n{arg}\r\n", arg.len()).into_bytes());
    }
    out
}

/// Splits a MONITOR line, `+1700000000.123456 [0 127.0.0.1:5000] "get" "k"` (`[0 lua]` for a
/// script's command), into the command name and whether a script ran it.
fn parse_monitor_line(line: &str) -> Option<(&str, bool)> {
    let line = line.strip_prefix('+')?;
    let open = line.find('[')?;
    // An IPv6 client address has brackets of its own: the source ends at `] "`.
    let close = open + line[open..].find("] \"")?;
    let in_script = line[open + 1..close].ends_with(" lua");
    let rest = &line[close + 3..];
    Some((&rest[..rest.find('"')?], in_script))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_are_parsed_without_the_bench_own_commands() {
        let info = "# Commandstats\r\n\
                    cmdstat_evalsha:calls=20,usec=1,usec_per_call=0.05,rejected_calls=0\r\n\
                    cmdstat_config|resetstat:calls=1,usec=1\r\n\
                    cmdstat_get:calls=30,usec=1\r\n\
                    cmdstat_info:calls=1,usec=1\r\n";
        let counts = CommandCounts::parse(info);
        assert_eq!(counts.total(), 50);
        let counts = counts.without_counter(10, 0);
        assert_eq!(
            counts.per_op(10),
            vec![("evalsha".to_owned(), 2.0), ("get".to_owned(), 2.0)]
        );
    }

    #[test]
    fn monitor_lines_tell_scripts_apart() {
        assert_eq!(
            parse_monitor_line("+1.5 [0 127.0.0.1:5000] \"evalsha\" \"ab\" \"1\"\r\n"),
            Some(("evalsha", false))
        );
        assert_eq!(
            parse_monitor_line("+1.5 [0 lua] \"GET\" \"k\"\r\n"),
            Some(("GET", true))
        );
        assert_eq!(
            parse_monitor_line("+1.5 [0 [::1]:5000] \"set\" \"k\"\r\n"),
            Some(("set", false))
        );
        assert_eq!(parse_monitor_line("+OK\r\n"), None);
    }
}
