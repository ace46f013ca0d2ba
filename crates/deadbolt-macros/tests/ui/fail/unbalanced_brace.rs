use deadbolt::{Client, Error, locked};

#[locked(key = "order:{id", client = locks)]
async fn work(locks: &Client, id: u64) -> Result<(), Error> {
    let _ = id;
    Ok(())
}

fn main() {}
