//! When `kiln schedule` starts daily runs: a cron expression in an IANA time zone, the run
//! date derived from the fire time, and catch-up of missed fire times.

use std::str::FromStr;

use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// `[pipeline.schedule]` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Cron expression: 5 fields (`min hour dom month dow`) or 6/7 with seconds (and year).
    pub cron: String,
    /// IANA time zone of the cron expression, e.g. `Europe/Berlin` (default `UTC`).
    #[serde(default = "default_tz")]
    pub timezone: String,
    /// Run missed fire times (every one since the last scheduled run) when starting.
    #[serde(default)]
    pub catch_up: bool,
    /// Run date = the fire time's local date + this many days (e.g. -2 when a day's
    /// examples need the next day's clicks).
    #[serde(default = "default_offset")]
    pub date_offset_days: i64,
    /// With catch-up and no earlier scheduled run: the first run date to catch up from.
    #[serde(default)]
    pub start_date: Option<String>,
}

fn default_tz() -> String {
    "UTC".into()
}
fn default_offset() -> i64 {
    -1
}

/// A parsed `[pipeline.schedule]`.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: cron::Schedule,
    tz: Tz,
    /// Run missed fire times.
    pub catch_up: bool,
    offset: i64,
    start_date: Option<NaiveDate>,
}

/// At most this many catch-up runs are planned at once.
const MAX_CATCH_UP: usize = 3660;

impl Schedule {
    /// Parses the cron expression (5 fields get a leading `0` seconds field) and time zone.
    pub fn new(cfg: &ScheduleConfig) -> anyhow::Result<Self> {
        let fields = cfg.cron.split_whitespace().count();
        let expr = match fields {
            5 => format!("0 {}", cfg.cron.trim()),
            6 | 7 => cfg.cron.trim().to_string(),
            n => bail!(
                "cron `{}`: expected 5 fields (min hour day month weekday) or 6-7 with seconds, got {n}",
                cfg.cron
            ),
        };
        let cron = cron::Schedule::from_str(&expr)
            .map_err(|e| anyhow::anyhow!("cron `{}`: {e}", cfg.cron))?;
        let tz: Tz = cfg
            .timezone
            .parse()
            .map_err(|e| anyhow::anyhow!("timezone `{}`: {e}", cfg.timezone))?;
        if cron.after(&Utc::now().with_timezone(&tz)).next().is_none() {
            bail!("cron `{}` never fires again", cfg.cron);
        }
        let start_date = cfg
            .start_date
            .as_deref()
            .map(|s| {
                NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .with_context(|| format!("start_date `{s}`: expected YYYY-MM-DD"))
            })
            .transpose()?;
        Ok(Schedule {
            cron,
            tz,
            catch_up: cfg.catch_up,
            offset: cfg.date_offset_days,
            start_date,
        })
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .after(&t.with_timezone(&self.tz))
            .next()
            .map(|f| f.with_timezone(&Utc))
    }

    /// The run date of a fire time: its local date plus `date_offset_days`.
    pub fn run_date(&self, fire: DateTime<Utc>) -> NaiveDate {
        fire.with_timezone(&self.tz).date_naive() + chrono::TimeDelta::days(self.offset)
    }

    /// The latest fire time at or before `now` (searched back in growing windows, up to
    /// 400 days).
    pub fn latest_at_or_before(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        for back in [60, 3_600, 86_400, 32 * 86_400, 400 * 86_400] {
            let from = now - chrono::TimeDelta::seconds(back);
            let mut last = None;
            for f in self.cron.after(&from.with_timezone(&self.tz)) {
                let f = f.with_timezone(&Utc);
                if f > now {
                    break;
                }
                last = Some(f);
            }
            if last.is_some() {
                return last;
            }
        }
        None
    }

    /// The first fire time whose run date is `date`.
    pub fn first_fire_of(&self, date: NaiveDate) -> anyhow::Result<Option<DateTime<Utc>>> {
        // Its local day is date - offset; start just before that day's local midnight.
        let day = date - chrono::TimeDelta::days(self.offset);
        let local_midnight = self
            .tz
            .from_local_datetime(&day.and_hms_opt(0, 0, 0).context("midnight")?)
            .earliest()
            .context("local midnight does not exist")?;
        let begin = local_midnight - chrono::TimeDelta::seconds(1);
        Ok(self
            .cron
            .after(&begin)
            .map(|f| f.with_timezone(&Utc))
            .take_while(|f| self.run_date(*f) <= date)
            .find(|f| self.run_date(*f) == date))
    }

    /// How far the daily data is behind the schedule at `now`, given the newest run date
    /// that succeeded: zero while the latest due run date succeeded, else the time since the
    /// fire time of the first run date after `last_success` (after `start_date`, or the
    /// latest due one, when nothing succeeded yet).
    pub fn lag(
        &self,
        last_success: Option<NaiveDate>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<chrono::TimeDelta> {
        let Some(latest) = self.latest_at_or_before(now) else {
            return Ok(chrono::TimeDelta::zero());
        };
        let latest_date = self.run_date(latest);
        let first = match (last_success, self.start_date) {
            (Some(l), _) if l >= latest_date => return Ok(chrono::TimeDelta::zero()),
            (Some(l), _) => l + chrono::Days::new(1),
            (None, Some(s)) if s < latest_date => s,
            (None, _) => latest_date,
        };
        let fire = self
            .first_fire_of(first)?
            .filter(|f| *f <= latest)
            .unwrap_or(latest);
        Ok(now - fire)
    }

    /// Run dates due at `now`, oldest first, given the newest date already run.
    /// Catch-up on: every fire time since the one after `last_done` (or since `start_date`
    /// when nothing ran yet). Catch-up off: only the latest fire time, if not done.
    pub fn due(
        &self,
        last_done: Option<NaiveDate>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Vec<NaiveDate>> {
        let Some(latest) = self.latest_at_or_before(now) else {
            return Ok(Vec::new());
        };
        let latest_date = self.run_date(latest);
        let not_done = |d: NaiveDate| last_done.is_none_or(|l| d > l);
        let first = match (self.catch_up, last_done, self.start_date) {
            (true, Some(l), _) => Some(l + chrono::Days::new(1)),
            (true, None, Some(s)) => Some(s),
            _ => None,
        };
        let Some(first) = first else {
            return Ok(if not_done(latest_date) {
                vec![latest_date]
            } else {
                Vec::new()
            });
        };
        // Fire times whose run date is >= first: they start on local day first - offset.
        let day = first - chrono::TimeDelta::days(self.offset);
        let local_midnight = self
            .tz
            .from_local_datetime(&day.and_hms_opt(0, 0, 0).context("midnight")?)
            .earliest()
            .context("local midnight does not exist")?;
        let mut dates: Vec<NaiveDate> = Vec::new();
        let begin = local_midnight - chrono::TimeDelta::seconds(1);
        for f in self.cron.after(&begin) {
            let f = f.with_timezone(&Utc);
            if f > now {
                break;
            }
            let d = self.run_date(f);
            if d >= first && not_done(d) && dates.last() != Some(&d) {
                dates.push(d);
            }
            if dates.len() >= MAX_CATCH_UP {
                break;
            }
        }
        Ok(dates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(cron: &str, tz: &str, catch_up: bool, start: Option<&str>) -> Schedule {
        Schedule::new(&ScheduleConfig {
            cron: cron.into(),
            timezone: tz.into(),
            catch_up,
            date_offset_days: -2,
            start_date: start.map(String::from),
        })
        .unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn fires_in_the_time_zone() {
        // 02:30 in Berlin is 01:30 UTC in winter.
        let s = sched("30 2 * * *", "Europe/Berlin", false, None);
        let next = s.next_after(utc("2026-11-22T00:00:00Z")).unwrap();
        assert_eq!(next, utc("2026-11-22T01:30:00Z"));
        assert_eq!(s.run_date(next), d("2026-11-20"));
        // Local date, not UTC date: 00:30 Tokyo on the 23rd is 15:30 UTC on the 22nd.
        let s = sched("30 0 * * *", "Asia/Tokyo", false, None);
        let next = s.next_after(utc("2026-11-22T12:00:00Z")).unwrap();
        assert_eq!(next, utc("2026-11-22T15:30:00Z"));
        assert_eq!(s.run_date(next), d("2026-11-21"));
    }

    #[test]
    fn catch_up_on_and_off() {
        let now = utc("2026-11-25T12:00:00Z");
        let on = sched("0 3 * * *", "UTC", true, None);
        // Last done 2026-11-19: fires of the 22nd..25th give dates 20..23.
        assert_eq!(
            on.due(Some(d("2026-11-19")), now).unwrap(),
            [
                d("2026-11-20"),
                d("2026-11-21"),
                d("2026-11-22"),
                d("2026-11-23")
            ]
        );
        assert!(on.due(Some(d("2026-11-23")), now).unwrap().is_empty());
        // Nothing done yet and no start date: the latest only.
        assert_eq!(on.due(None, now).unwrap(), [d("2026-11-23")]);
        let from = sched("0 3 * * *", "UTC", true, Some("2026-11-22"));
        assert_eq!(
            from.due(None, now).unwrap(),
            [d("2026-11-22"), d("2026-11-23")]
        );
        let off = sched("0 3 * * *", "UTC", false, None);
        assert_eq!(
            off.due(Some(d("2026-11-19")), now).unwrap(),
            [d("2026-11-23")]
        );
        assert!(off.due(Some(d("2026-11-23")), now).unwrap().is_empty());
        // Before today's fire time, yesterday's is the latest.
        let early = utc("2026-11-25T02:00:00Z");
        assert_eq!(off.due(None, early).unwrap(), [d("2026-11-22")]);
    }

    #[test]
    fn lag_behind_the_schedule() {
        // Fires at 03:00 UTC; run date = fire date - 2.
        let s = sched("0 3 * * *", "UTC", true, None);
        let now = utc("2026-11-25T12:00:00Z");
        // The latest fire (25th 03:00) is run date 23rd: done, no lag.
        assert_eq!(s.lag(Some(d("2026-11-23")), now).unwrap().num_seconds(), 0);
        // Last success the 21st: the 22nd's fire was the 24th 03:00, 33 hours ago.
        assert_eq!(s.lag(Some(d("2026-11-21")), now).unwrap().num_hours(), 33);
        // Nothing succeeded, no start date: since the latest fire, 9 hours ago.
        assert_eq!(s.lag(None, now).unwrap().num_hours(), 9);
        let from = sched("0 3 * * *", "UTC", true, Some("2026-11-20"));
        // Since the start date's fire, the 22nd 03:00.
        assert_eq!(from.lag(None, now).unwrap().num_hours(), 81);
        assert_eq!(
            s.first_fire_of(d("2026-11-20")).unwrap(),
            Some(utc("2026-11-22T03:00:00Z"))
        );
    }

    #[test]
    fn rejects_bad_cron_and_zone() {
        let bad = |cron: &str, tz: &str| {
            Schedule::new(&ScheduleConfig {
                cron: cron.into(),
                timezone: tz.into(),
                catch_up: false,
                date_offset_days: -1,
                start_date: None,
            })
            .unwrap_err()
            .to_string()
        };
        assert!(bad("0 3 * *", "UTC").contains("expected 5 fields"));
        assert!(bad("0 3 * * *", "Mars/Olympus").contains("timezone `Mars/Olympus`"));
        assert!(bad("0 99 * * *", "UTC").contains("cron `0 99 * * *`"));
    }
}
