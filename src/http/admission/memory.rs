//! Request memory: the share of `admission.max_inflight_bytes` that the sends in progress hold.
//!
//! Two figures, kept under one lock:
//!
//! - **Arrived**: body bytes that have reached the server and are buffered. This is the memory
//!   bound: a piece that would take `arrived + promised` past the budget refuses its send
//!   part-way, so it is never buffered.
//! - **Promised**: for each send admitted with a declared `Content-Length`, the part of its body
//!   not yet arrived. A send is admitted only when its declared body fits beside what has
//!   arrived and what is promised, so a send that keeps its promise always has room to finish,
//!   and a burst of large sends is refused at once (before their bodies) rather than all
//!   admitted and all refused half-way.
//!
//! A promise is not a claim on the budget for ever: a client may declare 16 MiB and trickle a
//! byte a second. When a send does not fit, the promises of sends admitted at least
//! [`PROMISE_MIN_AGE`] ago are revoked, slowest first (fewest bytes arrived per unit of time),
//! as far as that makes room. A revoked send goes on, charged for what arrives, and is refused
//! part-way only if the budget is really full of arrived bytes. So slow clients hold what they
//! have sent, not what they declared, as soon as anyone else needs the room.
//!
//! Invariant: `arrived + promised <= budget` (each send counted at most `budget`: a body larger
//! than the whole budget, within `max_request_bytes`, passes alone).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A promise younger than this is never revoked: the sends of a burst all arrive within a
/// moment of each other, and their rates say nothing yet. (A client that opens connections
/// faster than this can still hold promises; it must keep them up, connection after connection.)
pub const PROMISE_MIN_AGE: Duration = Duration::from_millis(100);

/// The ledger shared by all sends.
pub struct Ledger {
    budget: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    arrived: u64,
    promised: u64,
    next_id: u64,
    sends: HashMap<u64, InProgress>,
    revoked: u64,
}

struct InProgress {
    declared: u64,
    arrived: u64,
    admitted: Instant,
    promised: bool,
}

impl InProgress {
    fn promise(&self) -> u64 {
        if self.promised {
            self.declared.saturating_sub(self.arrived)
        } else {
            0
        }
    }
}

/// A send's place in the ledger; its bytes are returned when dropped.
pub struct Reservation {
    ledger: Arc<Ledger>,
    id: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut st = self.ledger.state.lock();
        if let Some(s) = st.sends.remove(&self.id) {
            st.arrived -= s.arrived;
            st.promised -= s.promise();
        }
    }
}

/// Bytes held by the sends in progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub arrived: u64,
    pub promised: u64,
    /// Promises revoked so far.
    pub revoked: u64,
}

impl Ledger {
    pub fn new(budget: u64) -> Arc<Self> {
        Arc::new(Self { budget: budget.max(1), state: Mutex::new(State::default()) })
    }

    /// Admits a send declaring `declared` body bytes (`None`: not declared, charged as it
    /// arrives), revoking slow sends' promises if that makes room; `None` when it does not fit.
    pub fn admit(self: &Arc<Self>, declared: Option<u64>, now: Instant) -> Option<Reservation> {
        let wanted = declared.unwrap_or(0).min(self.budget);
        let mut st = self.state.lock();
        if st.arrived + st.promised + wanted > self.budget {
            let mut revocable: Vec<(u64, u128, u64)> = st
                .sends
                .iter()
                .filter(|(_, s)| s.promise() > 0 && now.saturating_duration_since(s.admitted) >= PROMISE_MIN_AGE)
                .map(|(&id, s)| (id, now.saturating_duration_since(s.admitted).as_micros().max(1), s.arrived))
                .collect();
            let room: u64 = revocable.iter().map(|&(id, _, _)| st.sends[&id].promise()).sum();
            if st.arrived + st.promised - room + wanted > self.budget {
                return None;
            }
            // Slowest first: a.arrived / a.age < b.arrived / b.age, compared without division.
            revocable.sort_by(|a, b| (u128::from(a.2) * b.1).cmp(&(u128::from(b.2) * a.1)));
            for (id, _, _) in revocable {
                if st.arrived + st.promised + wanted <= self.budget {
                    break;
                }
                let s = st.sends.get_mut(&id).expect("listed above");
                let promise = s.promise();
                s.promised = false;
                st.promised -= promise;
                st.revoked += 1;
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        st.promised += wanted;
        st.sends.insert(id, InProgress { declared: wanted, arrived: 0, admitted: now, promised: declared.is_some() });
        Some(Reservation { ledger: self.clone(), id })
    }

    /// Records that `arrived` bytes of `r`'s body have arrived in all; `false` (nothing
    /// recorded) when the new bytes are beyond its promise and do not fit.
    pub fn charge(&self, r: &Reservation, arrived: u64) -> bool {
        let arrived = arrived.min(self.budget);
        let mut st = self.state.lock();
        let State { arrived: total, promised, sends, .. } = &mut *st;
        let s = sends.get_mut(&r.id).expect("a reservation stays in the ledger until dropped");
        if arrived <= s.arrived {
            return true;
        }
        let delta = arrived - s.arrived;
        let covered = delta.min(s.promise());
        if *total + *promised + (delta - covered) > self.budget {
            return false;
        }
        *total += delta;
        *promised -= covered;
        s.arrived = arrived;
        true
    }

    pub fn held(&self) -> Held {
        let st = self.state.lock();
        Held { arrived: st.arrived, promised: st.promised, revoked: st.revoked }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    #[test]
    fn a_kept_promise_always_has_room_and_bursts_are_refused_before_their_bodies() {
        let l = Ledger::new(10 * KIB);
        let t0 = Instant::now();
        let a = l.admit(Some(6 * KIB), t0).expect("a");
        let b = l.admit(Some(4 * KIB), t0).expect("b");
        assert!(l.admit(Some(1), t0).is_none(), "all promised, none old enough to revoke");
        assert_eq!(l.held(), Held { arrived: 0, promised: 10 * KIB, revoked: 0 });
        assert!(l.charge(&a, 6 * KIB) && l.charge(&b, 2 * KIB) && l.charge(&b, KIB));
        assert_eq!(l.held(), Held { arrived: 8 * KIB, promised: 2 * KIB, revoked: 0 });
        drop(a);
        assert_eq!(l.held(), Held { arrived: 2 * KIB, promised: 2 * KIB, revoked: 0 });
        let c = l.admit(Some(6 * KIB), t0).expect("room again");
        drop((b, c));
        assert_eq!(l.held(), Held::default());
    }

    #[test]
    fn slow_promises_are_revoked_slowest_first_and_only_as_far_as_needed() {
        let l = Ledger::new(10 * KIB);
        let t0 = Instant::now();
        let slow = l.admit(Some(5 * KIB), t0).expect("slow");
        let fast = l.admit(Some(5 * KIB), t0).expect("fast");
        assert!(l.charge(&slow, 10) && l.charge(&fast, 3 * KIB));
        let young = t0 + PROMISE_MIN_AGE / 2;
        assert!(l.admit(Some(KIB), young).is_none(), "promises younger than PROMISE_MIN_AGE stand");
        let later = t0 + PROMISE_MIN_AGE;
        let new = l.admit(Some(KIB), later).expect("the slow send's promise makes room");
        let h = l.held();
        assert_eq!(h.revoked, 1);
        assert_eq!(h.promised, 2 * KIB + KIB, "the fast send keeps its promise");
        // The revoked send goes on, charged for what arrives while there is room.
        assert!(l.charge(&slow, 4 * KIB));
        assert!(l.charge(&fast, 5 * KIB), "a kept promise still fits");
        assert!(l.charge(&new, KIB));
        assert!(!l.charge(&slow, 5 * KIB), "full of arrived bytes: refused part-way");
        assert_eq!(l.held().arrived, 10 * KIB);
        // Nothing left to revoke: refused, and no promise was taken for it.
        assert!(l.admit(Some(KIB), later).is_none());
        assert_eq!(l.held().revoked, 1);
        drop((slow, fast, new));
        assert_eq!(l.held(), Held { arrived: 0, promised: 0, revoked: 1 });
    }

    #[test]
    fn undeclared_bodies_are_charged_as_they_arrive_and_big_ones_pass_alone() {
        let l = Ledger::new(8 * KIB);
        let t0 = Instant::now();
        let chunked = l.admit(None, t0).expect("undeclared");
        assert_eq!(l.held().promised, 0);
        assert!(l.charge(&chunked, 8 * KIB));
        assert!(l.charge(&chunked, 9 * KIB), "one send is counted at most the whole budget");
        assert_eq!(l.held().arrived, 8 * KIB);
        drop(chunked);
        let big = l.admit(Some(100 * KIB), t0).expect("over the whole budget, alone");
        assert!(l.charge(&big, 100 * KIB), "counted as the whole budget");
        assert_eq!(l.held().arrived, 8 * KIB);
        assert!(l.admit(Some(1), t0 + PROMISE_MIN_AGE).is_none());
    }
}
