//! Durations as people write them on a command line: `250ms`, `3s`, `2m`.

use std::time::Duration;

/// Parses `N` followed by `ms`, `s`, `m` or `h`. `Err` says what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = || format!("invalid duration {text:?}: expected a number with a unit, such as 500ms, 3s or 2m");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(expected)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| expected())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(expected()),
    };
    // A clock plus a longer duration could overflow (a panic where a
    // deadline is computed); nothing here needs more than a year.
    if d > MAX_DURATION {
        return Err(format!("invalid duration {text:?}: longer than a year"));
    }
    Ok(d)
}

/// The longest duration accepted anywhere.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// The longest pause lease a sidecar or guard accepts (`--max-pause`): far
/// above any sensible pause, and far below where adding it to a clock
/// could overflow.
pub const MAX_LEASE: Duration = Duration::from_secs(48 * 3600);

/// A pause lease: a duration from 1s to [`MAX_LEASE`].
pub fn parse_lease(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_secs(1) || d > MAX_LEASE {
        return Err(format!("invalid lease {text:?}: expected a duration from 1s to {}", format_duration(MAX_LEASE)));
    }
    Ok(d)
}

/// For people: `30m`, `90s`, `1h30m`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, s / 60 % 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if sec > 0 || out.is_empty() {
        out.push_str(&format!("{sec}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_rejects_the_rest() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "3", "s", "1.5s", "-1s", "3 s", "3sec", "18446744073709551615s", "9999999h"] {
            assert!(parse_duration(bad).unwrap_err().contains("invalid duration"), "{bad}");
        }
    }

    #[test]
    fn leases_are_bounded() {
        assert_eq!(parse_lease("30m"), Ok(Duration::from_secs(1800)));
        for bad in ["0s", "500ms", "49h", "18446744073709551615s", "999999999999999999h"] {
            assert!(parse_lease(bad).unwrap_err().starts_with("invalid "), "{bad}");
        }
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_duration(Duration::from_secs(1800)), "30m");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }
}
