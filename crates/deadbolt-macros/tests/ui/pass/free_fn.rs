//! Free functions taking the client as a parameter (`&Client`, `Client`, `Arc<Client>`), and
//! one taking it from a static.
#![deny(warnings)]
#![allow(dead_code)]

use std::sync::{Arc, LazyLock};

use deadbolt::{Client, Error, locked};

#[locked(key = "report:{day}", client = locks)]
async fn by_ref(locks: &Client, day: u32) -> Result<u32, Error> {
    Ok(day)
}

#[locked(key = "report:{day}", client = locks)]
async fn by_value(locks: Client, day: u32) -> Result<u32, Error> {
    drop(locks);
    Ok(day)
}

#[locked(key = "report:{day}", client = locks, lease = "2m")]
async fn in_arc(locks: Arc<Client>, day: u32) -> Result<u32, Error> {
    Ok(day)
}

struct State {
    locks: Client,
}

// Compile-only fixture: `main` never touches STATE, so its initializer never runs.
static STATE: LazyLock<State> = LazyLock::new(|| unreachable!("compile-only fixture"));

#[locked(key = "nightly", client = STATE.locks, lease = "24h", wait = "0s")]
async fn from_static() -> deadbolt::Result<()> {
    Ok(())
}

fn main() {}
