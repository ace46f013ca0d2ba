//! Type errors in the body point at the body; in a key hole, at the key.
use deadbolt::{Client, Error, locked};

struct Order {
    id: u64,
}

#[locked(key = "order:{order.idd}", client = locks)]
async fn ship(locks: &Client, order: Order) -> Result<u64, Error> {
    let n: u32 = "one";
    Ok(order.id + u64::from(n))
}

fn main() {}
