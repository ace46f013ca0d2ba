use deadbolt::{Client, Error, locked};

#[locked(key = "a", client = locks, timeout = "3s")]
async fn work(locks: &Client) -> Result<(), Error> {
    Ok(())
}

fn main() {}
