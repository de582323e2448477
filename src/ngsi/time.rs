//! ISO 8601 date-time parsing for NGSI `DateTime`/`ISO8601` values and `TimeInstant` (pure).
//!
//! Accepts every form Kafnus's end-to-end tests send (`001_ngsi_types/003_date_time`): a date
//! alone, `T` or space separated times with minutes, seconds and any number of
//! fraction digits (kept to the microsecond, PostgreSQL's precision), and offsets `Z`, `±hh`,
//! `±hh:mm`, `±hhmm`. A value without an offset is read as UTC, as Orion and Kafnus do.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};

/// Why a string is not an ISO 8601 date-time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ISO 8601 date-time {0:?}")]
pub struct TimeError(pub String);

/// Parses an ISO 8601 date-time into UTC.
///
/// # Errors
/// [`TimeError`] naming the input when it is not one of the accepted forms or not a real
/// calendar date/time.
pub fn parse_datetime(input: &str) -> Result<DateTime<Utc>, TimeError> {
    parse(input.trim()).ok_or_else(|| TimeError(input.to_string()))
}

fn parse(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    // Four digits at most: the year fits an i32.
    let date = NaiveDate::from_ymd_opt(year as i32, month, day)?;
    let mut rest = &b[10..];
    if rest.is_empty() {
        return Some(Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0)?));
    }
    if rest[0] != b'T' && rest[0] != b't' && rest[0] != b' ' {
        return None;
    }
    rest = &rest[1..];
    // hours, then optional :mm, :ss, .fraction
    let hour = digits(rest.get(0..2)?)?;
    rest = &rest[2..];
    let (mut minute, mut second, mut nanos) = (0u32, 0u32, 0u32);
    if rest.first() == Some(&b':') {
        minute = digits(rest.get(1..3)?)?;
        rest = &rest[3..];
        if rest.first() == Some(&b':') {
            second = digits(rest.get(1..3)?)?;
            rest = &rest[3..];
            if matches!(rest.first(), Some(b'.') | Some(b',')) {
                let frac_len = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
                if frac_len == 0 {
                    return None;
                }
                let frac = &rest[1..1 + frac_len];
                // Keep nanosecond digits; PostgreSQL rounds to microseconds itself.
                let mut n: u32 = 0;
                for i in 0..9 {
                    n = n * 10 + frac.get(i).map_or(0, |c| u32::from(c - b'0'));
                }
                nanos = n;
                rest = &rest[1 + frac_len..];
            }
        }
    }
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    let naive = NaiveDateTime::new(date, time);
    let offset_secs: i32 = match rest {
        [] => 0,
        [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), tail @ ..] => {
            let (h, m) = match tail {
                [h1, h2] => (digits(&[*h1, *h2])?, 0),
                [h1, h2, b':', m1, m2] | [h1, h2, m1, m2] => {
                    (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?)
                }
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            // At most 23 and 59: the offset fits an i32.
            let secs = (h * 3600 + m * 60) as i32;
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    let offset = FixedOffset::east_opt(offset_secs)?;
    let local = offset.from_local_datetime(&naive).single()?;
    Some(local.with_timezone(&Utc))
}

/// The value of 1 to 4 ASCII digits (every field of the forms above); `None` for anything else.
/// Read directly: going through `str::parse` cost about a tenth of transform's instructions
/// in the core benchmark (two date-times per notification, six fields each).
fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 4 {
        return None;
    }
    b.iter().try_fold(0, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
    })
}

/// Renders a UTC instant as RFC 3339 with microseconds (`2026-03-01T08:15:00.123456Z`), the
/// form bound into `timestamptz` columns and written into the error log's queries.
pub fn to_rfc3339_micros(t: &DateTime<Utc>) -> String {
    micros_text(t, 'T', "Z")
}

/// Renders a UTC instant as PostgreSQL's `timestamp` text with microseconds and no zone
/// (`2026-03-01 08:15:00.123456`), the form bound into `timestamp` columns. Years outside
/// 0–9999 and leap seconds take chrono's form (`%Y` with a sign and more digits; second 60),
/// as they always have.
pub fn to_naive_micros(t: &DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    if (0..=9999).contains(&t.year()) && t.nanosecond() < 1_000_000_000 {
        micros_text(t, ' ', "")
    } else {
        t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string()
    }
}

/// `YYYY-MM-DD<sep>HH:MM:SS.ffffff<zone>`, hand-written rather than with `format()`: this runs
/// for every timestamp bound as text, and chrono parses its format string on each call (about
/// 540 instructions more per value in the core benchmark).
fn micros_text(t: &DateTime<Utc>, sep: char, zone: &str) -> String {
    use chrono::{Datelike, Timelike};
    use std::fmt::Write;
    let mut s = String::with_capacity(27);
    let _ = write!(
        s,
        "{:04}-{:02}-{:02}{sep}{:02}:{:02}:{:02}.{:06}{zone}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.timestamp_subsec_micros().min(999_999)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naive_text_is_chronos_own() {
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .map(|t| t.and_utc());
        let instants = [
            parse_datetime("2025-05-15T12:00:02.123456789Z").ok(),
            parse_datetime("0001-01-01T00:00:00Z").ok(),
            parse_datetime("9999-12-31T23:59:59.999999Z").ok(),
            DateTime::from_timestamp(253_402_300_800, 5_000), // year 10000
            DateTime::from_timestamp(-62_198_755_200, 0),     // year -1
            leap,
        ];
        for t in instants {
            let t = t.expect("a valid instant");
            let chrono = t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string();
            assert_eq!(to_naive_micros(&t), chrono, "{t:?}");
        }
    }

    #[test]
    fn accepted_forms() {
        let cases = [
            ("2025-05-15", "2025-05-15T00:00:00.000000Z"),
            ("2025-05-15T12:00:01", "2025-05-15T12:00:01.000000Z"),
            ("2025-05-15T12:00:02.123Z", "2025-05-15T12:00:02.123000Z"),
            (
                "2025-05-15T12:00:03.123+02:00",
                "2025-05-15T10:00:03.123000Z",
            ),
            ("2025-05-15T12:00:04+02", "2025-05-15T10:00:04.000000Z"),
            ("2025-05-15T12:00:05+0200", "2025-05-15T10:00:05.000000Z"),
            ("2025-05-15T12:01Z", "2025-05-15T12:01:00.000000Z"),
            ("2025-05-15T12:02", "2025-05-15T12:02:00.000000Z"),
            ("2025-05-15T13", "2025-05-15T13:00:00.000000Z"),
            (
                "2025-05-15 13:00:00.123456789-03:30",
                "2025-05-15T16:30:00.123456Z",
            ),
            ("2026-03-01T08:15:00.000Z", "2026-03-01T08:15:00.000000Z"),
            ("2024-02-29T23:59:59.999999Z", "2024-02-29T23:59:59.999999Z"),
        ];
        for (input, want) in cases {
            let got = parse_datetime(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(to_rfc3339_micros(&got), want, "{input}");
        }
    }

    #[test]
    fn rejected_forms() {
        for bad in [
            "",
            "null",
            "March",
            "12345",
            "2025-13-01",
            "2025-02-30",
            "2025-05-15T25:00",
            "2025-05-15T12:00:00.Z",
            "2025-05-15T12:00:00+2",
            "2025-05-15X12",
            "2025/05/15",
            "2025-05-15T12:00:00 garbage",
        ] {
            assert!(parse_datetime(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
