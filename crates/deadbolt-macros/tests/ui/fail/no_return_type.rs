use deadbolt::{Client, locked};

#[locked(key = "a", client = locks)]
async fn work(locks: &Client) {
    let _ = locks;
}

fn main() {}
