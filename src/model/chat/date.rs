//! The date a chat template sees through `strftime_now` (Llama 3.2's "Today Date"), pinned by
//! `model.date` so that a prompt renders the same on every day it is run.

use std::fmt;
use std::str::FromStr;

/// A calendar date (proleptic Gregorian), the moment `strftime_now` reports: its midnight.
/// Written `YYYY-MM-DD` (in TOML too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PinnedDate {
    year: i32,
    month: u32,
    day: u32,
}

/// The default `model.date`: the date Llama 3.1's template writes when given none, so Llama 3.1
/// and 3.2 render the same header by default.
pub const DEFAULT_DATE: &str = "2024-07-26";

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl FromStr for PinnedDate {
    type Err = String;
    /// `YYYY-MM-DD`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("must be a date YYYY-MM-DD, got `{s}`");
        let mut parts = s.splitn(3, '-');
        let mut next = |len: usize| -> Result<u32, String> {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != len || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        let (year, month, day) = (next(4)? as i32, next(2)?, next(2)?);
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return Err(format!("`{s}` is not a day of the calendar"));
        }
        Ok(Self { year, month, day })
    }
}

impl TryFrom<String> for PinnedDate {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<PinnedDate> for String {
    fn from(d: PinnedDate) -> String {
        d.to_string()
    }
}

impl fmt::Display for PinnedDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl PinnedDate {
    /// Day of the year, 1-based.
    fn ordinal(&self) -> u32 {
        (1..self.month)
            .map(|m| days_in_month(self.year, m))
            .sum::<u32>()
            + self.day
    }

    /// 0 = Monday … 6 = Sunday (Sakamoto's method).
    fn weekday(&self) -> usize {
        const T: [i32; 12] = [0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4];
        let y = if self.month < 3 {
            self.year - 1
        } else {
            self.year
        };
        let sunday0 =
            (y + y / 4 - y / 100 + y / 400 + T[self.month as usize - 1] + self.day as i32) % 7;
        ((sunday0 + 6) % 7) as usize
    }

    /// Python's `datetime.strftime` at this date's midnight, for the directives templates use
    /// (`%d %m %Y %y %b %B %a %A %e %j %H %I %M %S %p %%`); another directive is an error, not a
    /// guess.
    pub fn strftime(&self, format: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let month = MONTHS[self.month as usize - 1];
            let weekday = WEEKDAYS[self.weekday()];
            match chars.next() {
                Some('d') => out.push_str(&format!("{:02}", self.day)),
                Some('e') => out.push_str(&format!("{:>2}", self.day)),
                Some('m') => out.push_str(&format!("{:02}", self.month)),
                Some('Y') => out.push_str(&format!("{:04}", self.year)),
                Some('y') => out.push_str(&format!("{:02}", self.year.rem_euclid(100))),
                Some('b') => out.push_str(&month[..3]),
                Some('B') => out.push_str(month),
                Some('a') => out.push_str(&weekday[..3]),
                Some('A') => out.push_str(weekday),
                Some('j') => out.push_str(&format!("{:03}", self.ordinal())),
                Some('H') | Some('M') | Some('S') => out.push_str("00"),
                Some('I') => out.push_str("12"),
                Some('p') => out.push_str("AM"),
                Some('%') => out.push('%'),
                Some(other) => {
                    return Err(format!(
                        "strftime_now: directive `%{other}` is not supported (model.date pins the date; supported: %d %e %m %Y %y %b %B %a %A %j %H %I %M %S %p %%)"
                    ))
                }
                None => return Err("strftime_now: format ends with a lone `%`".into()),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected strings: Python 3, `datetime.date(Y, M, D).strftime(fmt)`.
    #[test]
    fn formats_like_python() {
        let d: PinnedDate = "2024-07-26".parse().unwrap();
        assert_eq!(d.strftime("%d %b %Y").unwrap(), "26 Jul 2024");
        assert_eq!(d.strftime("%A, %B %e %y").unwrap(), "Friday, July 26 24");
        assert_eq!(
            d.strftime("%j %a %m %H:%M:%S %I%p %%").unwrap(),
            "208 Fri 07 00:00:00 12AM %"
        );
        let d: PinnedDate = "2000-03-01".parse().unwrap();
        assert_eq!(d.strftime("%a %j %e").unwrap(), "Wed 061  1");
        let d: PinnedDate = "2025-01-05".parse().unwrap();
        assert_eq!(d.strftime("%A %d %b").unwrap(), "Sunday 05 Jan");
        assert!(d.strftime("%Z").unwrap_err().contains("%Z"));
    }

    #[test]
    fn rejects_non_dates() {
        for bad in [
            "2024-02-30",
            "2023-02-29",
            "24-07-26",
            "2024-7-26",
            "today",
            "2024-13-01",
        ] {
            assert!(bad.parse::<PinnedDate>().is_err(), "{bad}");
        }
        assert!("2024-02-29".parse::<PinnedDate>().is_ok());
        assert_eq!(
            DEFAULT_DATE.parse::<PinnedDate>().unwrap().to_string(),
            DEFAULT_DATE
        );
    }
}
