use deadbolt::{Client, Error, locked};

#[locked(key = "a", client = locks, wait = "2days")]
async fn work(locks: &Client) -> Result<(), Error> {
    Ok(())
}

fn main() {}
