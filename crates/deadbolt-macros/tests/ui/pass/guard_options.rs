//! `guard = g` binds the lock scope; `options = PRESET` takes a `LockOptions` value.
#![deny(warnings)]
#![allow(dead_code)]

use std::time::Duration;

use deadbolt::{Client, Error, Lease, LockOptions, locked};

const LIKES: LockOptions =
    LockOptions::new(Duration::from_secs(1), Lease::Fixed(Duration::from_secs(3)));

#[locked(key = "likes:{id}", client = locks, guard = g)]
async fn fenced(locks: &Client, id: u64) -> Result<u64, Error> {
    let _name: &str = g.name();
    Ok(g.fencing_token().await? + id)
}

#[locked(key = "likes:{id}", client = locks, options = LIKES)]
async fn preset(locks: &Client, id: u64) -> Result<u64, Error> {
    Ok(id)
}

#[locked(key = "likes:{id}", client = locks, options = LockOptions::SHORT, guard = lock)]
async fn preset_path(locks: &Client, id: u64) -> Result<bool, Error> {
    let _ = id;
    Ok(lock.is_held())
}

fn main() {}
