//! `deadbolt status`: what Redis knows of one lock.

use deadbolt::Client;

use crate::RedisArgs;

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
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let target = args.redis.target()?;
    let client = Client::builder(&target.url)
        .key_prefix(&args.key_prefix)
        .connect()
        .await?;
    let keys = client.keys(&args.name)?;
    let info = client.inspect(&args.name).await?;
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
        (true, Some(ttl)) => format!("locked, expires in {}", humantime::format_duration(ttl)),
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
