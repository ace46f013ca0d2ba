use deadbolt::{Client, Error, locked};

#[locked(key = "a", client = locks, lease = "5ms")]
async fn work(locks: &Client) -> Result<(), Error> {
    Ok(())
}

fn main() {}
