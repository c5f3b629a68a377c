//! Timestamps, the one place moat writes and reads them: RFC 3339 in UTC
//! (`2026-11-25T14:06:08Z`), through the `time` crate. Container records,
//! logs, image store records, RBAC and moatd audit lines, scanner reports
//! all use these.

use std::time::{SystemTime, UNIX_EPOCH};

use ::time::format_description::well_known::Rfc3339;
use ::time::OffsetDateTime;

/// What a time outside the `time` crate's range is shown as.
const EPOCH: &str = "1970-01-01T00:00:00Z";

/// Seconds since the epoch as RFC 3339 in UTC, to the second
/// (`2026-11-25T14:06:08Z`); the epoch for a time it cannot show.
pub fn rfc3339(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| EPOCH.to_string())
}

/// Now as RFC 3339 in UTC, to the second.
pub fn now_rfc3339() -> String {
    rfc3339(since_epoch().as_secs() as i64)
}

/// Now as RFC 3339 in UTC with nanoseconds
/// (`2026-12-06T19:45:46.000000001Z`).
pub fn now_rfc3339_nanos() -> String {
    let d = since_epoch();
    let secs = rfc3339(d.as_secs() as i64);
    format!("{}.{:09}Z", secs.trim_end_matches('Z'), d.subsec_nanos())
}

/// Nanoseconds since the epoch of an RFC 3339 time in moat's own form
/// (UTC, `T`, `Z`, at most nanoseconds: `2026-12-06T19:45:46Z`, with or
/// without a fraction), else `None`.
pub fn parse_rfc3339_nanos(s: &str) -> Option<i128> {
    let frac = s
        .split_once('.')
        .map_or(0, |(_, f)| f.len().saturating_sub(1));
    if !s.ends_with('Z') || s.as_bytes().get(10) != Some(&b'T') || frac > 9 {
        return None;
    }
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos())
}

/// Since the epoch; zero for a clock set before it.
fn since_epoch() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_to_the_second() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(1_795_615_568), "2026-11-25T14:06:08Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(19_782 * 86_400 + 3661), "2024-02-29T01:01:01Z");
        assert_eq!(rfc3339(i64::MAX), EPOCH);
        let now = now_rfc3339();
        assert!(now.len() == 20 && now.ends_with('Z'), "{now}");
    }

    #[test]
    fn nanoseconds_round_trip() {
        assert_eq!(
            parse_rfc3339_nanos("1970-01-01T00:00:01Z"),
            Some(1_000_000_000)
        );
        assert_eq!(
            parse_rfc3339_nanos("1970-01-01T00:00:00.5Z"),
            Some(500_000_000)
        );
        let now = now_rfc3339_nanos();
        let t = parse_rfc3339_nanos(&now).unwrap();
        assert_eq!(now.len(), 30, "{now}");
        let sys = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        assert!((sys - t).abs() < 5_000_000_000);
        assert_eq!(
            rfc3339((t / 1_000_000_000) as i64),
            now[..19].to_string() + "Z"
        );
        for bad in [
            "",
            "2020-13-01T00:00:00Z",
            "2020-01-01 00:00:00Z",
            "2020-01-01T00:00:00",
            "2020-01-01T00:00:00+01:00",
            "2020-01-01T00:00:00.1234567890Z",
            "yesterday",
        ] {
            assert_eq!(parse_rfc3339_nanos(bad), None, "{bad}");
        }
    }
}
