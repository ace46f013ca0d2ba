//! `deadbolt status`: what Redis knows of one lock.
//!
//! With several servers, the lock's state is the majority's view (for a Redlock, the owner a
//! majority names, as the library's `inspect` reports it), followed by what each server holds.

use std::time::Duration;

use deadbolt::{Client, LockInfo};
use futures_util::future::join_all;

use crate::connect::{self, RedisArgs, Topology};
use crate::exit::Interrupted;
use crate::human;

/// How long one server may take to say what it holds.
const NODE_TIMEOUT: Duration = Duration::from_secs(2);

/// Options of `deadbolt status`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    redis: RedisArgs,
    /// The lock name
    name: String,
    /// Key prefix of the lock's Redis keys
    #[arg(long, default_value = "deadbolt")]
    key_prefix: String,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
}

/// Prints the lock's state: held or free, its TTL, its last fencing token.
///
/// # Errors
///
/// Redis is unreachable or refuses; the lock key holds a value of another type; Ctrl-C.
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    tokio::select! {
        shown = show(&args) => shown,
        _ = tokio::signal::ctrl_c() => Err(Interrupted.into()),
    }
}

async fn show(args: &Args) -> anyhow::Result<()> {
    let redis = args.redis.resolve()?;
    let client = redis.client(&args.key_prefix).await?;
    let keys = client.keys(&args.name)?;
    let info = match client.inspect(&args.name).await {
        Ok(info) => info,
        // A key of another type (a hash, a list) is not a lock without expiry: `run` cannot take
        // it, and `status` says what it holds, as `run` does.
        Err(err) => return Err(connect::explain_on(&redis, &client, err).await),
    };
    // Each server's own view, with several; asked after the majority's, so that a lock taken in
    // between shows as held by someone else rather than missing from the majority.
    let nodes = match &redis {
        Topology::Single(_) | Topology::Cluster(_) => None,
        _ => Some(node_views(&redis, &client, &keys.lock, &info).await),
    };
    if args.json {
        let mut value = serde_json::json!({
            "name": args.name,
            "key": keys.lock,
            "locked": info.locked,
            "ttl_ms": info.ttl.map(|t| t.as_millis() as u64),
            "fence": info.fence,
        });
        if let Some(nodes) = &nodes {
            value["mode"] = serde_json::json!(mode(&redis));
            value["needed"] = serde_json::json!(needed(&redis));
            value["nodes"] = nodes.iter().map(NodeView::json).collect();
        }
        println!("{value}");
        return Ok(());
    }
    // Copies on a minority of a Redlock's servers (a holder that lost its majority, a crashed
    // acquisition) do not make the lock held, but are worth a word.
    let copies = nodes.as_ref().map_or(0, |nodes| {
        nodes
            .iter()
            .filter(|n| n.state.as_ref().is_ok_and(|s| s.locked))
            .count()
    });
    let state = match (info.locked, info.ttl) {
        (false, _) if copies > 0 && needed(&redis).is_some() => format!(
            "free: no majority holds it ({copies} of {} servers hold a copy)",
            redis.nodes().len()
        ),
        (false, _) => "free".to_owned(),
        (true, Some(ttl)) => format!("locked, expires in {}", human::duration(ttl)),
        (true, None) => "locked, no expiry (set by a peer without a TTL?)".to_owned(),
    };
    println!("lock   {}", args.name);
    println!("key    {}", keys.lock);
    println!("state  {state}");
    match info.fence {
        Some(fence) => println!("fence  {fence} (last token issued)"),
        None => println!("fence  none issued (or the counter expired)"),
    }
    if let Some(nodes) = &nodes {
        match needed(&redis) {
            Some(needed) => println!(
                "nodes  {} (redlock: held when {needed} of {} agree)",
                nodes.len(),
                nodes.len()
            ),
            None => println!("nodes  {} (sharded: each lock lives on one)", nodes.len()),
        }
        let width = nodes.iter().map(|n| n.server.len()).max().unwrap_or(0);
        for node in nodes {
            println!("  {:<width$}  {}", node.server, node.describe());
        }
    }
    Ok(())
}

/// The mode's name in `--json`.
fn mode(redis: &Topology) -> &'static str {
    match redis {
        Topology::Single(_) => "single",
        Topology::Redlock(_) => "redlock",
        Topology::Sharded(_) => "sharded",
        Topology::Cluster(_) => "cluster",
    }
}

/// The majority a Redlock needs; none for the other modes.
fn needed(redis: &Topology) -> Option<usize> {
    match redis {
        Topology::Redlock(nodes) => Some(nodes.len() / 2 + 1),
        _ => None,
    }
}

/// What one server holds of the lock.
#[derive(Debug)]
struct NodeView {
    /// The server's URL, password hidden.
    server: String,
    /// Its state, or why it did not answer.
    state: Result<NodeState, String>,
}

/// One server's lock key.
#[derive(Debug)]
struct NodeState {
    /// Whether the key exists.
    locked: bool,
    /// Its remaining TTL, if it has one.
    ttl: Option<Duration>,
    /// Whether its owner is the one the majority names.
    majority_owner: bool,
}

impl NodeView {
    /// The server's line of the table.
    fn describe(&self) -> String {
        match &self.state {
            Err(why) => format!("no answer: {why}"),
            Ok(NodeState { locked: false, .. }) => "free".to_owned(),
            Ok(state) => {
                let whose = if state.majority_owner {
                    "held by the owner"
                } else {
                    "held by another owner"
                };
                match state.ttl {
                    Some(ttl) => format!("{whose}, expires in {}", human::duration(ttl)),
                    None => format!("{whose}, no expiry"),
                }
            }
        }
    }

    /// The server's object in `--json`.
    fn json(&self) -> serde_json::Value {
        match &self.state {
            Ok(state) => serde_json::json!({
                "server": self.server,
                "locked": state.locked,
                "ttl_ms": state.ttl.map(|t| t.as_millis() as u64),
                "owner": state.majority_owner,
                "error": null,
            }),
            Err(why) => serde_json::json!({
                "server": self.server,
                "locked": null,
                "ttl_ms": null,
                "owner": null,
                "error": why,
            }),
        }
    }
}

/// Why a server gave no reply: a connection that is refused (nothing listens; the client's
/// own connection keeps retrying, so its command only times out) is told from silence.
async fn silent(url: &str) -> String {
    use redis::IntoConnectionInfo as _;
    let silence = format!("no reply within {}", human::duration(NODE_TIMEOUT));
    let Ok(info) = url.into_connection_info() else {
        return silence;
    };
    let (host, port) = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => (host, port),
        redis::ConnectionAddr::TcpTls { host, port, .. } => (host, port),
        _ => return silence,
    };
    let probe = tokio::net::TcpStream::connect((host.as_str(), *port));
    match tokio::time::timeout(Duration::from_millis(500), probe).await {
        Ok(Err(err)) => format!("cannot connect: {err}"),
        _ => silence,
    }
}

/// Asks every server, at once, what its copy of `key` holds. `owner` in each view says whether
/// the server's holder is the one the majority (`info`) names.
async fn node_views(
    redis: &Topology,
    client: &Client,
    key: &str,
    info: &LockInfo,
) -> Vec<NodeView> {
    let nodes = client.connections().into_iter().zip(redis.nodes());
    let asks = nodes.map(|(mut conn, node)| async move {
        let mut pipe = redis::pipe();
        pipe.pttl(key).get(key);
        let reply = tokio::time::timeout(
            NODE_TIMEOUT,
            pipe.query_async::<(i64, Option<String>)>(&mut conn),
        )
        .await;
        match reply {
            Err(_) => Err(silent(&node.url).await),
            Ok(Err(err)) => Err(crate::exit::one_line(&err)),
            Ok(Ok((pttl, owner))) => Ok(NodeState {
                locked: pttl != -2,
                ttl: u64::try_from(pttl).ok().map(Duration::from_millis),
                majority_owner: owner.is_some() && owner == info.owner,
            }),
        }
    });
    join_all(asks)
        .await
        .into_iter()
        .zip(redis.nodes())
        .map(|(state, node)| NodeView {
            server: deadbolt::redact_url(&node.url),
            state,
        })
        .collect()
}
