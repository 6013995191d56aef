//! Durations as the binaries read them (flags, the settings file) and print them (`--help`).
//!
//! Accepted: a whole number with `ms`, `s`, `m` or `h`, or a bare number of seconds: `500ms`,
//! `30s`, `2m`, `1h`, `30`. Printed as a default would be typed: whole hours in `h`, whole
//! minutes from ten on in `m`, else seconds, else milliseconds (`30s`, `60s`, `15m`, `1h`). `humantime` reads more forms (`1h 30m`,
//! `2days`, `1M`...) but not a bare number of seconds, which the flags always took; the few
//! lines here keep exactly the forms documented in the README.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A [`Duration`] that reads and prints as the flags write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Dur, String> {
        parse_duration(s).map(Dur)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        let (hour, minute, second) = (3_600_000, 60_000, 1_000);
        match ms {
            0 => f.write_str("0s"),
            _ if ms.is_multiple_of(hour) => write!(f, "{}h", ms / hour),
            // Under ten minutes, seconds read better (`60s`, `90s`, `300s`).
            _ if ms.is_multiple_of(minute) && ms >= 10 * minute => write!(f, "{}m", ms / minute),
            _ if ms.is_multiple_of(second) => write!(f, "{}s", ms / second),
            _ => write!(f, "{ms}ms"),
        }
    }
}

impl From<Dur> for Duration {
    fn from(d: Dur) -> Duration {
        d.0
    }
}

/// A duration value: `500ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = |per: u64| {
        n.checked_mul(per)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration {s:?} is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => secs(60),
        "h" => secs(3600),
        _ => Err(format!(
            "invalid duration unit in {s:?} (use ms, s, m or h)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_form_parses() {
        for (text, want) in [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("30", Duration::from_secs(30)),
            (" 2m ", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("0", Duration::ZERO),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "s",
            "1.5s",
            "-1s",
            "10x",
            "1d",
            "1 h",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration(&format!("{}h", u64::MAX / 60)).is_err());
    }

    #[test]
    fn durations_print_as_they_are_typed_and_read_back() {
        for (d, text) in [
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(60), "60s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(900), "15m"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(Dur(d).to_string(), text);
            assert_eq!(text.parse::<Dur>(), Ok(Dur(d)));
        }
    }
}
