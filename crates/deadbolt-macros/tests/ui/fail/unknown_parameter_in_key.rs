use deadbolt::{Client, Error, locked};

#[locked(key = "movie-likes:{movie}", client = locks)]
async fn like(locks: &Client, movie_id: i64) -> Result<(), Error> {
    let _ = movie_id;
    Ok(())
}

fn main() {}
