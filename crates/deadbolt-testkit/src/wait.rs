//! Bounded polling shared by the multi-server topologies.
//!
//! Replication, cluster agreement and failover all settle asynchronously, so
//! the topologies wait on observable conditions instead of sleeping a fixed
//! time; every wait has a limit and reports the last unmet condition.

use std::thread;
use std::time::{Duration, Instant};

/// Delay between two checks of a condition.
const POLL: Duration = Duration::from_millis(50);

/// Calls `check` until it returns `Ok` or `limit` has passed; on timeout,
/// returns the reason of the last failed check.
pub(crate) fn until<T>(
    limit: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(reason) if Instant::now() >= deadline => return Err(reason),
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// The value of `name` in an `INFO` reply (`name:value` lines).
pub(crate) fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (key, value) = line.trim().split_once(':')?;
        (key == name).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_info_fields() {
        let info = "# Replication\r\nrole:slave\r\nmaster_link_status:up\r\n";
        assert_eq!(info_field(info, "role"), Some("slave"));
        assert_eq!(info_field(info, "master_link_status"), Some("up"));
        assert_eq!(info_field(info, "master_port"), None);
    }

    #[test]
    fn until_reports_the_last_reason() {
        let mut n = 0;
        let result: Result<(), String> = until(Duration::from_millis(120), || {
            n += 1;
            Err(format!("try {n}"))
        });
        assert_eq!(result, Err(format!("try {n}")));
        assert_eq!(until(Duration::ZERO, || Ok::<_, String>(7)), Ok(7));
    }
}
