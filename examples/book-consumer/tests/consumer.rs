//! Four worker processes drain a queue of messages for six books: no two messages of one book are
//! ever processed at once, and different books are processed in parallel.

use std::process::Command;

use deadbolt_testkit::RedisServer;
use redis::Commands;

#[test]
fn one_message_per_book_at_a_time_books_in_parallel() {
    let server = RedisServer::start().unwrap();
    let mut conn = server.connection();
    let messages: Vec<String> = (1..=10)
        .flat_map(|seq| (1..=6).map(move |book| format!("{book}:{seq}")))
        .collect();
    let _: () = conn.rpush("books", &messages).unwrap();

    let workers: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|name| {
            Command::new(env!("CARGO_BIN_EXE_book-consumer"))
                .args([&server.url(), "books", name])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut w in workers {
        assert!(
            w.wait().unwrap().success(),
            "a worker failed (see its output)"
        );
    }

    let seen: Vec<String> = conn.lrange("seen", 0, -1).unwrap();
    let records: Vec<Vec<&str>> = seen.iter().map(|s| s.split(':').collect()).collect();
    assert_eq!(records.len(), 60, "every message processed once");
    for r in &records {
        assert_eq!(
            r[3], "1",
            "two workers inside book {} at once: {seen:?}",
            r[0]
        );
    }
    let mut messages: Vec<(&str, &str)> = records.iter().map(|r| (r[0], r[1])).collect();
    messages.sort();
    messages.dedup();
    assert_eq!(messages.len(), 60, "a message was processed twice");
    let busiest: u64 = records
        .iter()
        .map(|r| r[4].parse::<u64>().unwrap())
        .max()
        .unwrap();
    assert!(
        busiest >= 3,
        "books did not run in parallel (at most {busiest} at once)"
    );
    let workers: std::collections::BTreeSet<&str> = records.iter().map(|r| r[2]).collect();
    assert!(
        workers.len() >= 2,
        "all messages went to one worker: {workers:?}"
    );
}
