//! The safety checker's record and its verdict. Clients (separate processes) report every grant,
//! renewal, release, loss and fenced write as one text line with a timestamp from the machine's
//! monotonic clock, which all processes on it share; [`verify`] then checks the history:
//!
//! - no two holders' granted intervals overlap (an interval runs from the grant to the release,
//!   to the moment the holder learnt it lost the lock, or to the end of the validity it was
//!   given, renewals included, whichever comes first);
//! - fencing tokens increase in grant order;
//! - the resource accepted writes in non-decreasing token order, so no write with a token older
//!   than one it had seen got through.

use std::fmt;
use std::str::FromStr;

/// One thing that happened, at `at` nanoseconds on the monotonic clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `client` was granted the lock with `token`, valid until `until`.
    Grant {
        /// The client.
        client: u32,
        /// The fencing token.
        token: u64,
        /// When the grant arrived.
        at: u64,
        /// The end of the validity.
        until: u64,
    },
    /// A renewal moved the end of the validity to `until`.
    Renew {
        /// The client.
        client: u32,
        /// The fencing token.
        token: u64,
        /// When the renewal succeeded.
        at: u64,
        /// The new end of the validity.
        until: u64,
    },
    /// The client released the lock (taken just before the release was sent).
    Release {
        /// The client.
        client: u32,
        /// The fencing token.
        token: u64,
        /// When.
        at: u64,
    },
    /// The client learnt it lost the lock.
    Lost {
        /// The client.
        client: u32,
        /// The fencing token.
        token: u64,
        /// When.
        at: u64,
    },
    /// A write to the fenced resource, accepted or refused.
    Write {
        /// The client.
        client: u32,
        /// The fencing token it carried.
        token: u64,
        /// When the answer arrived.
        at: u64,
        /// Whether the resource accepted it.
        accepted: bool,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Grant {
                client,
                token,
                at,
                until,
            } => write!(f, "grant {client} {token} {at} {until}"),
            Self::Renew {
                client,
                token,
                at,
                until,
            } => write!(f, "renew {client} {token} {at} {until}"),
            Self::Release { client, token, at } => write!(f, "release {client} {token} {at}"),
            Self::Lost { client, token, at } => write!(f, "lost {client} {token} {at}"),
            Self::Write {
                client,
                token,
                at,
                accepted,
            } => {
                write!(
                    f,
                    "write {client} {token} {at} {}",
                    if *accepted { "accepted" } else { "refused" }
                )
            }
        }
    }
}

impl FromStr for Event {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| -> Result<u64, String> {
            words
                .get(i)
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| format!("`{line}`: field {i} is not a number"))
        };
        let client = u32::try_from(number(1)?).map_err(|e| e.to_string())?;
        let (token, at) = (number(2)?, number(3)?);
        match words.first().copied() {
            Some("grant") => Ok(Self::Grant {
                client,
                token,
                at,
                until: number(4)?,
            }),
            Some("renew") => Ok(Self::Renew {
                client,
                token,
                at,
                until: number(4)?,
            }),
            Some("release") => Ok(Self::Release { client, token, at }),
            Some("lost") => Ok(Self::Lost { client, token, at }),
            Some("write") => Ok(Self::Write {
                client,
                token,
                at,
                accepted: words.get(4) == Some(&"accepted"),
            }),
            _ => Err(format!("`{line}`: not an event")),
        }
    }
}

/// What the history shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Grants.
    pub grants: usize,
    /// Successful renewals.
    pub renewals: usize,
    /// Releases.
    pub releases: usize,
    /// Losses noticed by their holders.
    pub losses: usize,
    /// Writes the resource accepted.
    pub writes_accepted: usize,
    /// Writes the resource refused for a stale token.
    pub writes_refused: usize,
    /// Everything that broke a rule, described.
    pub violations: Vec<String>,
}

/// One holder's time with the lock.
struct Holding {
    client: u32,
    token: u64,
    from: u64,
    to: u64,
}

/// Checks `events` and the resource's accepted tokens (in the order it accepted them).
pub fn verify(events: &[Event], accepted_tokens: &[u64]) -> Verdict {
    let mut verdict = Verdict::default();
    let mut holdings: Vec<Holding> = Vec::new();
    for event in events {
        match *event {
            Event::Grant {
                client,
                token,
                at,
                until,
            } => {
                verdict.grants += 1;
                holdings.push(Holding {
                    client,
                    token,
                    from: at,
                    to: until,
                });
            }
            Event::Renew {
                client,
                token,
                until,
                ..
            } => {
                verdict.renewals += 1;
                if let Some(h) = find(&mut holdings, client, token) {
                    h.to = h.to.max(until);
                }
            }
            Event::Release { client, token, at } => {
                verdict.releases += 1;
                if let Some(h) = find(&mut holdings, client, token) {
                    h.to = h.to.min(at);
                }
            }
            // A failed extension releases what is left of the lock, so the holder stops there.
            Event::Lost { client, token, at } => {
                verdict.losses += 1;
                if let Some(h) = find(&mut holdings, client, token) {
                    h.to = h.to.min(at);
                }
            }
            Event::Write { accepted, .. } => {
                if accepted {
                    verdict.writes_accepted += 1;
                } else {
                    verdict.writes_refused += 1;
                }
            }
        }
    }
    holdings.sort_by_key(|h| h.from);
    // The holding that reaches furthest so far: any later grant before its end overlaps it.
    let mut reaching: Option<&Holding> = None;
    for (i, later) in holdings.iter().enumerate() {
        if let Some(earlier) = reaching
            && later.from < earlier.to
        {
            verdict.violations.push(format!(
                "overlap: client {} (token {}) was granted the lock {} µs before client {} \
                 (token {}) stopped holding it",
                later.client,
                later.token,
                (earlier.to - later.from) / 1000,
                earlier.client,
                earlier.token
            ));
        }
        if let Some(earlier) = i.checked_sub(1).map(|j| &holdings[j])
            && later.token <= earlier.token
        {
            verdict.violations.push(format!(
                "token order: client {} was granted token {} after client {} had {}",
                later.client, later.token, earlier.client, earlier.token
            ));
        }
        if reaching.is_none_or(|r| later.to > r.to) {
            reaching = Some(later);
        }
    }
    for pair in accepted_tokens.windows(2) {
        if pair[1] < pair[0] {
            verdict.violations.push(format!(
                "stale write: the resource accepted token {} after {}",
                pair[1], pair[0]
            ));
        }
    }
    verdict
}

fn find(holdings: &mut [Holding], client: u32, token: u64) -> Option<&mut Holding> {
    holdings
        .iter_mut()
        .rev()
        .find(|h| h.client == client && h.token == token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(lines: &[&str]) -> Vec<Event> {
        lines.iter().map(|l| l.parse().expect("an event")).collect()
    }

    #[test]
    fn a_clean_history_has_no_violation() {
        let history = events(&[
            "grant 1 10 1000 5000",
            "write 1 10 1100 accepted",
            "renew 1 10 3000 8000",
            "release 1 10 6000",
            "grant 2 11 6500 9000",
            "write 1 10 7000 refused",
            "lost 2 11 9000",
        ]);
        let verdict = verify(&history, &[10, 11]);
        assert_eq!(verdict.violations, Vec::<String>::new());
        assert_eq!(
            (
                verdict.grants,
                verdict.renewals,
                verdict.releases,
                verdict.losses
            ),
            (2, 1, 1, 1)
        );
        assert_eq!((verdict.writes_accepted, verdict.writes_refused), (1, 1));
    }

    #[test]
    fn a_holder_that_learnt_it_lost_the_lock_holds_it_no_longer() {
        // Client 1's extension failed at 3000 (and released the rest); client 2 got it at 3500,
        // well before client 1's last validity would have ended.
        let history = events(&[
            "grant 1 10 1000 5000",
            "lost 1 10 3000",
            "grant 2 11 3500 7000",
        ]);
        assert_eq!(verify(&history, &[]).violations, Vec::<String>::new());
    }

    #[test]
    fn overlaps_token_order_and_stale_writes_are_violations() {
        let history = events(&[
            "grant 1 10 1000 5000",
            "renew 1 10 3000 8000",
            "grant 2 9 7000 9000",
        ]);
        let verdict = verify(&history, &[10, 9]);
        assert_eq!(verdict.violations.len(), 3, "{:?}", verdict.violations);
        assert!(verdict.violations[0].starts_with("overlap: client 2 (token 9)"));
        assert!(verdict.violations[1].starts_with("token order"));
        assert!(verdict.violations[2].starts_with("stale write"));
    }

    #[test]
    fn lines_round_trip_and_garbage_is_refused() {
        for line in [
            "grant 3 17 5 9",
            "renew 3 17 6 10",
            "release 3 17 7",
            "lost 3 17 8",
            "write 3 17 9 refused",
        ] {
            assert_eq!(line.parse::<Event>().expect("event").to_string(), line);
        }
        assert!("grant x 1 2 3".parse::<Event>().is_err());
        assert!("hello 1 2 3".parse::<Event>().is_err());
        assert!("".parse::<Event>().is_err());
    }
}
