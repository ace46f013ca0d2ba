use deadbolt::{Client, Error, LockOptions, locked};

#[locked(key = "a", client = locks, options = LockOptions::SHORT, wait = "1s")]
async fn work(locks: &Client) -> Result<(), Error> {
    Ok(())
}

fn main() {}
