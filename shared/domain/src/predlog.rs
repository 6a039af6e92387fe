//! Where prediction logs live on the store and how their objects are encoded: the contract
//! between serving (the writer) and the monitor (the reader).
//!
//! Objects are gzip-compressed JSON lines, one logged prediction a line, Hive-partitioned by
//! model, day and hour of the write:
//! `prediction-logs/model=MODEL/date=YYYY-MM-DD/hour=HH/HHMMSS-ID.jsonl.gz`, so Athena or any
//! Hive-aware reader can prune by partition. Builds before this layout wrote plain JSON lines to
//! `prediction-logs/MODEL/date=YYYY-MM-DD/HHMMSS-ID.jsonl`; readers still find those.

use std::io::{Read, Write};

use chrono::{DateTime, DurationRound, NaiveDate, Utc};

use crate::store::{ObjectStore, StoreError};

/// Prefix of every log.
pub const PREFIX: &str = "prediction-logs";

/// Longest a logged record waits before its object is written (the writer flushes far sooner):
/// the objects that can hold records of a window are those written in it or up to this long
/// after it.
pub const WRITE_LAG: chrono::Duration = chrono::Duration::hours(1);

/// The key of a log object written at `written`.
pub fn object_key(model: &str, written: DateTime<Utc>, id: &str) -> String {
    object_key_under(PREFIX, model, written, id)
}

/// The prefix of one hour's objects (written during that hour).
pub fn hour_prefix(model: &str, hour: DateTime<Utc>) -> String {
    hour_prefix_under(PREFIX, model, hour)
}

/// The key of an object written at `written` in the Hive layout under `root` (prediction logs,
/// feedback).
pub fn object_key_under(root: &str, model: &str, written: DateTime<Utc>, id: &str) -> String {
    format!(
        "{}{}-{id}.jsonl.gz",
        hour_prefix_under(root, model, written),
        written.format("%H%M%S")
    )
}

/// The prefix of one hour's objects in the Hive layout under `root`.
pub fn hour_prefix_under(root: &str, model: &str, hour: DateTime<Utc>) -> String {
    format!(
        "{root}/model={model}/date={}/hour={}/",
        hour.format("%Y-%m-%d"),
        hour.format("%H")
    )
}

/// The prefix of one day's objects in the layout before hour partitions.
pub fn legacy_day_prefix(model: &str, day: NaiveDate) -> String {
    format!("{PREFIX}/{model}/date={}/", day.format("%Y-%m-%d"))
}

/// The log objects that may hold records of `[from, until)`: written in the window or up to
/// [`WRITE_LAG`] after it (an object holds records from before it was written), in both layouts.
/// Listed one day partition at a time; hour-partitioned objects first, by hour and name, then
/// the day folders of earlier builds. Monitor runs and history pages both read through it.
pub async fn objects_for_window(
    store: &dyn ObjectStore,
    model: &str,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    let last = until + WRITE_LAG;
    let first_hour = from
        .duration_trunc(chrono::Duration::hours(1))
        .unwrap_or(from);
    let days: Vec<NaiveDate> = from
        .date_naive()
        .iter_days()
        .take_while(|d| *d <= last.date_naive())
        .collect();
    let hive = days
        .iter()
        .map(|d| format!("{PREFIX}/model={model}/date={}/", d.format("%Y-%m-%d")));
    let legacy = days.iter().map(|d| legacy_day_prefix(model, *d));
    let mut keys = Vec::new();
    for prefix in hive.chain(legacy) {
        for key in store.list(&prefix).await? {
            // Names carry the second an object was written in: it holds records from before
            // the end of that second only. A name without one counts by its hour partition.
            let keep = match written_at(&key) {
                Some(t) => t + chrono::Duration::seconds(1) > from && t <= last,
                None => partition_hour(&key).is_none_or(|h| h >= first_hour && h <= last),
            };
            if keep {
                keys.push(key);
            }
        }
    }
    Ok(keys)
}

/// Encodes JSON lines as an object body (gzip, fast level: serving pays for it).
pub fn encode(lines: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(lines.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(lines).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

/// The JSON lines of an object body (plain for objects in the earlier layout).
pub fn decode(key: &str, body: Vec<u8>) -> std::io::Result<Vec<u8>> {
    if !key.ends_with(".gz") {
        return Ok(body);
    }
    let mut lines = Vec::with_capacity(body.len() * 4);
    flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut lines)?;
    Ok(lines)
}

/// The second an object was written in, from its key in either layout.
pub fn written_at(key: &str) -> Option<DateTime<Utc>> {
    let (dir, name) = key.rsplit_once('/')?;
    let day = partition_day(dir)?;
    let time = chrono::NaiveTime::parse_from_str(name.get(..6)?, "%H%M%S").ok()?;
    Some(day.and_time(time).and_utc())
}

/// The start of the hour partition an object sits in (`date=…/hour=…`), whatever its name.
pub fn partition_hour(key: &str) -> Option<DateTime<Utc>> {
    let (dir, _) = key.rsplit_once('/')?;
    let day = partition_day(dir)?;
    let hour: u32 = dir
        .split('/')
        .find_map(|part| part.strip_prefix("hour="))?
        .parse()
        .ok()?;
    Some(day.and_hms_opt(hour, 0, 0)?.and_utc())
}

fn partition_day(dir: &str) -> Option<NaiveDate> {
    dir.split('/')
        .find_map(|part| part.strip_prefix("date="))
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hive_partitions_and_bodies_round_trip() {
        let t = DateTime::parse_from_rfc3339("2026-12-01T07:05:09Z")
            .unwrap()
            .to_utc();
        let key = object_key("m", t, "abc");
        assert_eq!(
            key,
            "prediction-logs/model=m/date=2026-12-01/hour=07/070509-abc.jsonl.gz"
        );
        assert!(key.starts_with(&hour_prefix("m", t)));
        assert_eq!(written_at(&key), Some(t));
        assert_eq!(
            partition_hour(&key).map(|h| h.to_rfc3339()),
            Some("2026-12-01T07:00:00+00:00".into())
        );
        let legacy = format!("{}070509-x.jsonl", legacy_day_prefix("m", t.date_naive()));
        assert_eq!(written_at(&legacy), Some(t));
        let lines = b"{\"a\":1}\n{\"a\":2}\n".repeat(100);
        let body = encode(&lines);
        assert!(
            body.len() < lines.len() / 5,
            "{} bytes of {}",
            body.len(),
            lines.len()
        );
        assert_eq!(decode(&key, body).unwrap(), lines);
        assert_eq!(decode(&legacy, lines.clone()).unwrap(), lines);
        assert!(decode(&key, b"not gzip".to_vec()).is_err());
    }
}
