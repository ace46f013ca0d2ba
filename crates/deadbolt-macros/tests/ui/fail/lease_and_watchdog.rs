use deadbolt::{Client, Error, locked};

#[locked(key = "a", client = locks, lease = "3s", watchdog = "30s")]
async fn work(locks: &Client) -> Result<(), Error> {
    Ok(())
}

fn main() {}
