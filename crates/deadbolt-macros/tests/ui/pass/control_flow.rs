//! `return` and `?` keep their meaning inside the locked body; generics and `impl Trait`.
#![deny(warnings)]
#![allow(dead_code)]

use std::fmt::Display;

use deadbolt::{Client, locked};

#[derive(Debug)]
enum AppError {
    Lock(deadbolt::Error),
    Parse(std::num::ParseIntError),
    Empty,
}

impl From<deadbolt::Error> for AppError {
    fn from(e: deadbolt::Error) -> Self {
        AppError::Lock(e)
    }
}

impl From<std::num::ParseIntError> for AppError {
    fn from(e: std::num::ParseIntError) -> Self {
        AppError::Parse(e)
    }
}

async fn fetch(s: &str) -> Result<String, std::num::ParseIntError> {
    s.parse::<u32>().map(|n| n.to_string())
}

#[locked(key = "parse:{input}", client = locks, lease = "500ms")]
async fn parse(locks: &Client, input: &str) -> Result<u32, AppError> {
    if input.is_empty() {
        return Err(AppError::Empty);
    }
    // `?` on a foreign error, converted through `From`.
    let n: u32 = input.parse()?;
    let again = fetch(input).await?;
    Ok(n + again.len() as u32)
}

#[locked(key = "generic:{id}", client = locks)]
async fn generic<T, E>(locks: &Client, id: T) -> Result<T, E>
where
    T: Display + Send,
    E: From<deadbolt::Error>,
{
    Ok(id)
}

#[locked(key = "impl:{id}", client = locks)]
async fn opaque(locks: &Client, id: u32) -> Result<impl Display, deadbolt::Error> {
    Ok(id)
}

/// The body's future is `Send`, so it can be spawned.
fn spawnable(locks: Client) {
    fn assert_send<T: Send>(_: T) {}
    assert_send(async move { parse(&locks, "1").await });
}

#[allow(unused_variables)]
#[locked(key = "attrs", client = locks)]
async fn inner_attribute(locks: &Client) -> anyhowish::Result<()> {
    #![allow(unused_mut)]
    let mut unused = 1;
    Ok(())
}

mod anyhowish {
    pub type Result<T> = std::result::Result<T, deadbolt::Error>;
}

trait Job {
    fn locks(&self) -> &Client;
    async fn run(&self, id: u32) -> Result<u32, deadbolt::Error>;
}

struct Nightly {
    locks: Client,
}

impl Job for Nightly {
    fn locks(&self) -> &Client {
        &self.locks
    }

    #[locked(key = "job:{id}", client = self.locks())]
    async fn run(&self, id: u32) -> Result<u32, deadbolt::Error> {
        Ok(id)
    }
}

fn main() {}
