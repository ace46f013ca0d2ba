//! Durations as people read them: `250ms`, `1.01s`, `2m 5s`, never `1.014684834s`.

use std::time::Duration;

/// `d` rounded to what a reader needs: whole microseconds under a millisecond, whole
/// milliseconds under a second, hundredths of a second under a minute, whole seconds above.
pub(crate) fn duration(d: Duration) -> String {
    let ms = (d.as_secs_f64() * 1000.0).round() as u64;
    if d < Duration::from_millis(1) {
        format!("{}µs", d.as_micros())
    } else if ms < 1000 {
        format!("{ms}ms")
    } else if d < Duration::from_secs(60) {
        let text = format!("{:.2}", d.as_secs_f64());
        let text = text.trim_end_matches('0').trim_end_matches('.');
        format!("{text}s")
    } else {
        let secs = d.as_secs_f64().round() as u64;
        humantime::format_duration(Duration::from_secs(secs)).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::duration;
    use std::time::Duration;

    #[test]
    fn durations_are_rounded_for_reading() {
        let ms = Duration::from_millis;
        assert_eq!(duration(Duration::from_nanos(1_014_684_834)), "1.01s");
        assert_eq!(duration(ms(250)), "250ms");
        assert_eq!(duration(Duration::from_micros(999_700)), "1s");
        assert_eq!(duration(ms(1000)), "1s");
        assert_eq!(duration(ms(1500)), "1.5s");
        assert_eq!(duration(ms(29_998)), "30s");
        assert_eq!(duration(ms(125_400)), "2m 5s");
        assert_eq!(duration(Duration::from_micros(20)), "20µs");
    }
}
