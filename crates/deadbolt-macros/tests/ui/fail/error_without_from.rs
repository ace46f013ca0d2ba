use deadbolt::{Client, locked};

#[derive(Debug)]
struct MyError;

#[locked(key = "a", client = locks)]
async fn work(locks: &Client) -> Result<(), MyError> {
    Ok(())
}

fn main() {}
