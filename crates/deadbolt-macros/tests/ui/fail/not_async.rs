use deadbolt::{Client, Error, locked};

#[locked(key = "a", client = locks)]
fn work(locks: &Client) -> Result<(), Error> {
    let _ = locks;
    Ok(())
}

fn main() {}
