//! `deadbolt status`: what Redis knows of one lock.

use crate::connect::{self, RedisArgs};
use crate::exit::Interrupted;
use crate::human;

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
    if args.json {
        let value = serde_json::json!({
            "name": args.name,
            "key": keys.lock,
            "locked": info.locked,
            "ttl_ms": info.ttl.map(|t| t.as_millis() as u64),
            "fence": info.fence,
        });
        println!("{value}");
        return Ok(());
    }
    let state = match (info.locked, info.ttl) {
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
    Ok(())
}
