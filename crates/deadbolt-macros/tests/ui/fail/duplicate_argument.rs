use deadbolt::{Client, Error, locked};

#[locked(key = "a", client = locks, key = "b")]
async fn work(locks: &Client) -> Result<(), Error> {
    Ok(())
}

fn main() {}
