//! A method on `&self` with the client in a field, and one on `&mut self`.
#![deny(warnings)]
#![allow(dead_code)]

use deadbolt::locked;

#[derive(Debug)]
enum LikeError {
    Lock(deadbolt::Error),
}

impl From<deadbolt::Error> for LikeError {
    fn from(e: deadbolt::Error) -> Self {
        LikeError::Lock(e)
    }
}

struct Likes {
    locks: deadbolt::Client,
    count: u64,
}

impl Likes {
    #[locked(key = "movie-likes:{movie_id}", wait = "10s", lease = "3s", client = self.locks)]
    async fn like(&self, movie_id: i64, user_id: i64) -> Result<(), LikeError> {
        let _ = (movie_id, user_id, self.count);
        Ok(())
    }

    /// `&mut self`: the client is cloned before the body takes `self`.
    #[deadbolt::locked(key = "movie-likes:{movie_id}", client = self.locks, watchdog = "1m")]
    async fn like_mut(&mut self, movie_id: i64) -> Result<u64, LikeError> {
        self.count += 1;
        Ok(self.count)
    }

    /// The key can read `self`.
    #[locked(key = "likes:{self.count}:{{literal}}", client = self.locks, wait = "1500ms")]
    async fn by_self(self: std::sync::Arc<Self>) -> Result<(), LikeError> {
        Ok(())
    }
}

fn main() {}
