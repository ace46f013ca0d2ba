use deadbolt::{Client, Error, locked};

#[locked(key = "a", client = locks, wait = "10 secondz")]
async fn work(locks: &Client) -> Result<(), Error> {
    Ok(())
}

fn main() {}
