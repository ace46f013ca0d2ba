use deadbolt::{Client, Error, locked};

#[locked(client = locks, lease = "3s")]
async fn work(locks: &Client) -> Result<(), Error> {
    Ok(())
}

fn main() {}
