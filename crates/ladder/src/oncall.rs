//! Who is on call at an instant: weekly shifts in the home partner's time
//! zone, then one-off overrides (cover or leave), which win.

use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use std::collections::HashMap;

use nwd_proto::PartnerId;
use nwd_proto::directory::{Directory, Shift, Staff};
use time::OffsetDateTime;

/// Why a schedule cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
    #[error("bad day {0:?} (mon … sun)")]
    Day(String),
    #[error("bad time {0:?} (HH:MM, 00:00 … 24:00)")]
    Time(String),
}

fn weekday(day: &str) -> Result<Weekday, ScheduleError> {
    Ok(match day {
        "mon" => Weekday::Monday,
        "tue" => Weekday::Tuesday,
        "wed" => Weekday::Wednesday,
        "thu" => Weekday::Thursday,
        "fri" => Weekday::Friday,
        "sat" => Weekday::Saturday,
        "sun" => Weekday::Sunday,
        other => return Err(ScheduleError::Day(other.to_owned())),
    })
}

/// Minutes since midnight; "24:00" is 1440.
fn minutes(t: &str) -> Result<u32, ScheduleError> {
    let bad = || ScheduleError::Time(t.to_owned());
    let (h, m) = t.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 24 || m > 59 || (h == 24 && m != 0) || t.len() != 5 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// Whether a weekly shift covers a local weekday and minute of the day. A
/// shift whose end is before its start runs past midnight into the next day.
pub fn shift_covers(shift: &Shift, day: Weekday, minute: u32) -> Result<bool, ScheduleError> {
    let (start, end) = (minutes(&shift.start)?, minutes(&shift.end)?);
    let mut days = Vec::with_capacity(shift.days.len());
    for d in &shift.days {
        days.push(weekday(d)?);
    }
    if start <= end {
        return Ok(days.contains(&day) && start <= minute && minute < end);
    }
    // Overnight: the evening part on a listed day, the morning part the day after.
    Ok((days.contains(&day) && minute >= start)
        || (days.contains(&day.wrapping_sub(1)) && minute < end))
}

/// Checks every shift and time zone of the directory, so a bad schedule is
/// refused when the directory is loaded rather than when a step fires.
pub fn validate(directory: &Directory) -> Result<(), (String, ScheduleError)> {
    for p in &directory.partners {
        TimeZone::get(&p.timezone).map_err(|_| {
            (
                p.id.to_string(),
                ScheduleError::TimeZone(p.timezone.clone()),
            )
        })?;
    }
    for s in &directory.staff {
        for shift in &s.shifts {
            shift_covers(shift, Weekday::Monday, 0).map_err(|e| (s.id.to_string(), e))?;
        }
    }
    Ok(())
}

/// [`validate`] as a `nwd_runtime::directory::Check`.
pub fn check(directory: &Directory) -> Result<(), String> {
    validate(directory).map_err(|(who, e)| format!("{who}: {e}"))
}

/// Whether a staff member is on call at `now`: an override covering `now`
/// decides; otherwise a weekly shift in the home partner's time zone. Staff
/// with no shifts at all have no rota: being available on the dashboard is
/// being on call (a volunteer who logs in to help is never turned away).
/// Anything unreadable counts as *on call* — a schedule typo must not take
/// someone out of rotation silently (`validate` refuses it at load).
pub fn on_call(directory: &Directory, staff: &Staff, now: OffsetDateTime) -> bool {
    on_call_at(directory, staff, now, || {
        local_time(directory, &staff.partner, now)
    })
}

/// How far ahead [`shift_end`] looks: a rota that keeps someone on call
/// for longer than a week (a 24/7 rota, no rota at all) has no end to show.
pub const SHIFT_END_HORIZON: time::Duration = time::Duration::days(7);

/// When the staff member's current on-call period ends: the first instant
/// after `now` at which [`on_call`] turns false (shifts back to back, or
/// running past midnight, count as one period; an override of leave ends
/// it early, one of cover extends it). `None` when they are not on call
/// now, or stay on call for the whole [`SHIFT_END_HORIZON`].
pub fn shift_end(
    directory: &Directory,
    staff: &Staff,
    now: OffsetDateTime,
) -> Option<OffsetDateTime> {
    if !on_call(directory, staff, now) {
        return None;
    }
    let tz = directory
        .partner(&staff.partner)
        .and_then(|p| TimeZone::get(&p.timezone).ok())
        .unwrap_or(TimeZone::UTC);
    let horizon = now + SHIFT_END_HORIZON;
    // Shifts change on whole local minutes (every real offset is whole
    // minutes, so whole UTC minutes too); overrides at their own instants.
    let first_minute = now.replace_second(0).ok()?.replace_nanosecond(0).ok()? + MINUTE;
    let mut overrides: Vec<OffsetDateTime> = directory
        .overrides
        .iter()
        .filter(|o| o.staff == staff.id)
        .flat_map(|o| [o.from, o.until])
        .filter(|t| *t > now && *t <= horizon)
        .collect();
    overrides.sort();
    let mut overrides = overrides.into_iter().peekable();
    let mut minute = first_minute;
    while minute <= horizon {
        let next = match overrides.peek() {
            Some(o) if *o <= minute => overrides.next().unwrap_or(minute),
            _ => {
                let m = minute;
                minute += MINUTE;
                m
            }
        };
        if !on_call_at(directory, staff, next, || local_in(&tz, next)) {
            return Some(next);
        }
    }
    None
}

const MINUTE: time::Duration = time::Duration::minutes(1);

/// [`on_call`] for every staff member, in directory order, reading each
/// partner's time zone once.
pub fn on_call_all(directory: &Directory, now: OffsetDateTime) -> Vec<bool> {
    let mut local: HashMap<&PartnerId, Option<(Weekday, u32)>> = HashMap::new();
    directory
        .staff
        .iter()
        .map(|s| {
            on_call_at(directory, s, now, || {
                *local
                    .entry(&s.partner)
                    .or_insert_with(|| local_time(directory, &s.partner, now))
            })
        })
        .collect()
}

/// The weekday and minute of the day at `now` in the partner's time zone
/// (UTC if unknown); `None` if `now` is out of range.
fn local_time(
    directory: &Directory,
    partner: &PartnerId,
    now: OffsetDateTime,
) -> Option<(Weekday, u32)> {
    let tz = directory
        .partner(partner)
        .and_then(|p| TimeZone::get(&p.timezone).ok())
        .unwrap_or(TimeZone::UTC);
    local_in(&tz, now)
}

/// The weekday and minute of the day at `now` in `tz`.
fn local_in(tz: &TimeZone, now: OffsetDateTime) -> Option<(Weekday, u32)> {
    let local = jiff::Timestamp::new(now.unix_timestamp(), 0)
        .ok()?
        .to_zoned(tz.clone());
    let minute =
        u32::from(local.hour().unsigned_abs()) * 60 + u32::from(local.minute().unsigned_abs());
    Some((local.weekday(), minute))
}

fn on_call_at(
    directory: &Directory,
    staff: &Staff,
    now: OffsetDateTime,
    local: impl FnOnce() -> Option<(Weekday, u32)>,
) -> bool {
    if let Some(o) = directory
        .overrides
        .iter()
        .rev()
        .find(|o| o.staff == staff.id && o.from <= now && now < o.until)
    {
        return o.on_call;
    }
    if staff.shifts.is_empty() {
        return true;
    }
    let Some((day, minute)) = local() else {
        return true;
    };
    staff
        .shifts
        .iter()
        .any(|s| shift_covers(s, day, minute).unwrap_or(true))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::{directory, shift, sid};
    use nwd_proto::directory::OnCallOverride;
    use time::macros::datetime;

    #[test]
    fn on_call_all_agrees_with_on_call_for_everyone_at_every_hour() {
        let mut dir = directory();
        dir.overrides.push(OnCallOverride {
            staff: sid("ana"),
            from: datetime!(2026-11-24 12:00 UTC),
            until: datetime!(2026-11-24 15:00 UTC),
            on_call: false,
        });
        let mut seen = std::collections::HashSet::new();
        for hour in 0..(24 * 7) {
            let now = datetime!(2026-11-23 0:00 UTC) + time::Duration::hours(hour);
            let each: Vec<bool> = dir.staff.iter().map(|s| on_call(&dir, s, now)).collect();
            assert_eq!(on_call_all(&dir, now), each, "{now}");
            seen.extend(each);
        }
        assert_eq!(seen.len(), 2, "the week has people on and off call");
    }

    #[test]
    fn shifts_follow_the_partners_time_zone() {
        let mut dir = directory();
        // The clinic is in New York: 09:00–17:00 weekdays there.
        dir.staff[0].shifts = vec![shift(
            &["mon", "tue", "wed", "thu", "fri"],
            "09:00",
            "17:00",
        )];
        let ana = dir.staff[0].clone();
        // Tuesday 2026-11-24 14:30 UTC = 09:30 EST: on.
        assert!(on_call(&dir, &ana, datetime!(2026-11-24 14:30 UTC)));
        // 13:30 UTC = 08:30 EST: not yet.
        assert!(!on_call(&dir, &ana, datetime!(2026-11-24 13:30 UTC)));
        // 22:00 UTC = 17:00 EST: the end is exclusive.
        assert!(!on_call(&dir, &ana, datetime!(2026-11-24 22:00 UTC)));
        // Saturday.
        assert!(!on_call(&dir, &ana, datetime!(2026-11-28 15:00 UTC)));
    }

    #[test]
    fn a_shift_ends_where_on_call_turns_false() {
        let mut dir = directory();
        // New York, 09:00–17:00 weekdays; Tuesday 14:30 UTC is 09:30 there.
        dir.staff[0].shifts = vec![shift(
            &["mon", "tue", "wed", "thu", "fri"],
            "09:00",
            "17:00",
        )];
        let ana = dir.staff[0].clone();
        assert_eq!(
            shift_end(&dir, &ana, datetime!(2026-11-24 14:30:17 UTC)),
            Some(datetime!(2026-11-24 22:00 UTC))
        );
        // Off call now: no end to show.
        assert_eq!(shift_end(&dir, &ana, datetime!(2026-11-24 13:30 UTC)), None);
        // Back-to-back and overnight shifts are one period.
        dir.staff[0].shifts = vec![
            shift(&["tue"], "09:00", "17:00"),
            shift(&["tue"], "17:00", "02:00"),
        ];
        let ana = dir.staff[0].clone();
        assert_eq!(
            shift_end(&dir, &ana, datetime!(2026-11-24 14:30 UTC)),
            Some(datetime!(2026-11-25 07:00 UTC))
        );
    }

    #[test]
    fn overrides_move_a_shifts_end_and_a_rota_without_end_has_none() {
        let mut dir = directory();
        let ben = dir.staff[1].clone();
        // All week, every day: no end within the horizon.
        assert_eq!(shift_end(&dir, &ben, datetime!(2026-11-24 11:00 UTC)), None);
        // Leave from 12:00:30 ends it there, to the second.
        dir.overrides.push(OnCallOverride {
            staff: sid("ben"),
            from: datetime!(2026-11-24 12:00:30 UTC),
            until: datetime!(2026-11-24 18:00 UTC),
            on_call: false,
        });
        assert_eq!(
            shift_end(&dir, &ben, datetime!(2026-11-24 11:00 UTC)),
            Some(datetime!(2026-11-24 12:00:30 UTC))
        );
        // Cover outside any shift ends with the cover.
        dir.staff[0].shifts = vec![shift(&["sun"], "00:00", "01:00")];
        dir.overrides.push(OnCallOverride {
            staff: sid("ana"),
            from: datetime!(2026-11-24 10:00 UTC),
            until: datetime!(2026-11-24 12:00 UTC),
            on_call: true,
        });
        let ana = dir.staff[0].clone();
        assert_eq!(
            shift_end(&dir, &ana, datetime!(2026-11-24 11:00 UTC)),
            Some(datetime!(2026-11-24 12:00 UTC))
        );
        // No rota at all: on call whenever available, no end.
        dir.staff[0].shifts.clear();
        dir.overrides.clear();
        let ana = dir.staff[0].clone();
        assert_eq!(shift_end(&dir, &ana, datetime!(2026-11-24 11:00 UTC)), None);
    }

    #[test]
    fn overnight_shifts_run_into_the_next_day() {
        let s = shift(&["fri"], "22:00", "06:00");
        assert!(shift_covers(&s, Weekday::Friday, 23 * 60).unwrap());
        assert!(shift_covers(&s, Weekday::Saturday, 5 * 60 + 59).unwrap());
        assert!(!shift_covers(&s, Weekday::Saturday, 6 * 60).unwrap());
        assert!(!shift_covers(&s, Weekday::Friday, 5 * 60).unwrap());
        assert!(!shift_covers(&s, Weekday::Thursday, 23 * 60).unwrap());
        let all_day = shift(&["sun"], "00:00", "24:00");
        assert!(shift_covers(&all_day, Weekday::Sunday, 1439).unwrap());
    }

    #[test]
    fn overrides_win_over_shifts() {
        let mut dir = directory();
        dir.staff[0].shifts = vec![shift(&["sun"], "00:00", "01:00")];
        dir.overrides = vec![OnCallOverride {
            staff: sid("ana"),
            from: datetime!(2026-11-24 10:00 UTC),
            until: datetime!(2026-11-24 12:00 UTC),
            on_call: true,
        }];
        let ana = dir.staff[0].clone();
        assert!(on_call(&dir, &ana, datetime!(2026-11-24 11:00 UTC)));
        assert!(!on_call(&dir, &ana, datetime!(2026-11-24 12:00 UTC)));
        // Leave: off call despite an all-week shift.
        let ben = dir.staff[1].clone();
        assert!(on_call(&dir, &ben, datetime!(2026-11-24 11:00 UTC)));
        dir.overrides.push(OnCallOverride {
            staff: sid("ben"),
            from: datetime!(2026-11-24 00:00 UTC),
            until: datetime!(2026-11-25 00:00 UTC),
            on_call: false,
        });
        assert!(!on_call(&dir, &ben, datetime!(2026-11-24 11:00 UTC)));
    }

    #[test]
    fn bad_schedules_are_refused_at_load() {
        let mut dir = directory();
        validate(&dir).unwrap();
        dir.staff[0].shifts = vec![shift(&["monday"], "09:00", "17:00")];
        assert_eq!(
            validate(&dir).unwrap_err().1,
            ScheduleError::Day("monday".into())
        );
        dir.staff[0].shifts = vec![shift(&["mon"], "9:00", "17:00")];
        assert!(matches!(
            validate(&dir).unwrap_err().1,
            ScheduleError::Time(_)
        ));
        dir.staff[0].shifts = vec![shift(&["mon"], "09:00", "24:30")];
        assert!(matches!(
            validate(&dir).unwrap_err().1,
            ScheduleError::Time(_)
        ));
        dir.staff[0].shifts = vec![];
        dir.partners[0].timezone = "Mars/Olympus".into();
        assert!(matches!(
            validate(&dir).unwrap_err().1,
            ScheduleError::TimeZone(_)
        ));
    }
}
