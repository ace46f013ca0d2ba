//! Key templates with fields, method calls, indexing and patterns.
#![deny(warnings)]
#![allow(dead_code)]

use deadbolt::{Client, Error, locked};

struct Order {
    id: u64,
    lines: Vec<u32>,
}

struct User {
    name: String,
}

impl User {
    fn name(&self) -> &str {
        &self.name
    }
}

#[locked(key = "order:{order.id}", client = locks)]
async fn ship(locks: &Client, order: Order) -> Result<Order, Error> {
    Ok(order)
}

#[locked(key = "user:{user.name()}:{order.lines[0]}", client = locks)]
async fn greet(locks: &Client, user: &User, order: &Order) -> Result<usize, Error> {
    Ok(user.name().len() + order.lines.len())
}

#[locked(key = "pair:{a}-{b}", client = locks)]
async fn pair(locks: &Client, (a, b): (u8, u8)) -> Result<u8, Error> {
    Ok(a + b)
}

#[locked(key = "moved:{name}", client = locks)]
async fn moves_its_parameter(locks: &Client, name: String) -> Result<String, Error> {
    // The key was formatted before the body took `name`.
    Ok(name)
}

fn main() {}
