//! Small helpers: dates and times through the `time` crate.

use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// Days since 1970-01-01 of `date`.
fn days_since_epoch(date: time::Date) -> i64 {
    i64::from(date.to_julian_day())
        - i64::from(time::OffsetDateTime::UNIX_EPOCH.date().to_julian_day())
}

/// Parse `YYYY-MM-DD` (anything after the date, like a time, is ignored).
pub fn parse_date(s: &str) -> Option<i64> {
    let date = time::Date::parse(
        s.trim().get(..10)?,
        format_description!("[year]-[month]-[day]"),
    )
    .ok()?;
    Some(days_since_epoch(date))
}

/// An RFC 3339 timestamp (`2024-06-01T12:00:00.5Z`, `...+02:00`) as
/// (seconds since the epoch, nanoseconds), for ordering OSV `modified`
/// times; `None` when it does not parse. A space may separate the date and
/// the time (RFC 3339 allows it).
pub fn parse_timestamp(s: &str) -> Option<(i64, u32)> {
    let s = s.trim();
    let mut t = s.to_string();
    if t.get(10..11) == Some(" ") {
        t.replace_range(10..11, "T");
    }
    let t = time::OffsetDateTime::parse(&t, &Rfc3339).ok()?;
    Some((t.unix_timestamp(), t.nanosecond()))
}

/// Seconds since the epoch, now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Days since the epoch, today (UTC).
pub fn today() -> i64 {
    unix_now().div_euclid(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_order_by_time_not_text() {
        let t = |s| parse_timestamp(s).unwrap();
        assert!(t("2024-06-01T00:00:00.5Z") > t("2024-06-01T00:00:00Z"));
        assert_eq!(t("2024-06-01T02:00:00+02:00"), t("2024-06-01T00:00:00Z"));
        assert_eq!(t("1970-01-02T00:00:01Z"), (86_401, 0));
        assert_eq!(parse_timestamp("2024-06-01"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        assert_eq!(parse_date("2024-13-01"), None);
        assert_eq!(parse_date("soon"), None);
    }
}
