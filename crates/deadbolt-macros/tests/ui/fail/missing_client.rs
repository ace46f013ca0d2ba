use deadbolt::{Error, locked};

#[locked(key = "report:{day}")]
async fn work(day: u32) -> Result<(), Error> {
    let _ = day;
    Ok(())
}

fn main() {}
