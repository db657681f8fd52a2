//! Slot and time arithmetic of the timer wheel, all in one place.
//!
//! The wheel has `slots` slots of `precision_ms` each, so it spans `span = slots × precision`
//! (14 days at the default 2×7×24×3600 slots of 1 s). A slot is identified by its *slot time*,
//! the start of the precision interval it covers; slot time `S` lives at index
//! `(S / precision) mod slots`, so `S` and `S + span` share an index and the slot stores its
//! time to tell them apart.
//!
//! Placement of a message due at `deliver_at`, given the read pointer `read_time` (slots before
//! it are closed: dequeue-get has taken them) and the committed read time `committed ≤
//! read_time` (slots before it have fully fired):
//! - `Due`: its slot is closed — hand it straight to the dequeue side;
//! - `Wheel(S)`: `S = slot_time(deliver_at)` is at most `window_end(committed) = committed +
//!   span − 2 × precision`. Measuring the window from `committed`, not the read pointer, means a
//!   slot index is reused only once everything of its previous turn has fired, so a restart from
//!   an older checkpoint never meets a slot overwritten under units it still has to fire.
//! - `Roll(S)`: too far ahead — park it at `S = slot_time(deliver_at − k × span/2)` for the
//!   smallest `k` that brings it into the window (but not before `read_time`); when `S` fires it
//!   is placed again. Shifting by whole half-spans keeps each message's offset within the
//!   half-span, so rolled messages stay as spread out as their deliver times instead of bunching
//!   at the window's edge.
//!
//! dequeue-get keeps `read_time ≤ window_end(committed) − precision`
//! ([`Geometry::may_close`]), so every placement has a legal slot.

/// The default number of slots: two weeks of seconds, as RocketMQ's wheel.
pub const DEFAULT_SLOTS: u64 = 2 * 7 * 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub precision_ms: i64,
    pub slots: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Due,
    Wheel(i64),
    Roll(i64),
}

impl Geometry {
    pub fn new(precision_ms: i64, slots: u64) -> Self {
        assert!(precision_ms > 0 && slots >= 4, "validated by the config");
        Self { precision_ms, slots }
    }

    pub fn span_ms(&self) -> i64 {
        self.precision_ms * self.slots as i64
    }

    /// Start of the slot that contains `t`.
    pub fn slot_time(&self, t: i64) -> i64 {
        t.div_euclid(self.precision_ms) * self.precision_ms
    }

    /// Index of slot time `s` (which must be a slot time).
    pub fn index(&self, s: i64) -> usize {
        s.div_euclid(self.precision_ms).rem_euclid(self.slots as i64) as usize
    }

    /// The last slot time that may be linked while the read pointer is at `read_time`.
    pub fn window_end(&self, read_time: i64) -> i64 {
        read_time + self.span_ms() - 2 * self.precision_ms
    }

    pub fn place(&self, deliver_at: i64, read_time: i64, committed: i64) -> Placement {
        let s = self.slot_time(deliver_at);
        if s < read_time {
            return Placement::Due;
        }
        let end = self.window_end(committed.min(read_time));
        if s <= end {
            return Placement::Wheel(s);
        }
        let half = self.span_ms() / 2;
        let k = (s - end + half - 1) / half; // smallest k with s − k·half ≤ end
        Placement::Roll(self.slot_time(deliver_at - k * half).max(read_time))
    }

    /// May dequeue-get close slot `t` (advance the read pointer past it) while the earliest
    /// slot not fully fired is `committed`? Only while every later placement still has a slot.
    pub fn may_close(&self, t: i64, committed: i64) -> bool {
        t + self.precision_ms <= self.window_end(committed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: i64 = 1000;

    fn g() -> Geometry {
        Geometry::new(P, DEFAULT_SLOTS)
    }

    #[test]
    fn slot_time_at_every_boundary() {
        let g = g();
        assert_eq!(g.slot_time(0), 0);
        assert_eq!(g.slot_time(999), 0, "last ms of a slot");
        assert_eq!(g.slot_time(1000), 1000, "first ms of the next");
        assert_eq!(g.slot_time(-1), -1000, "before the epoch rounds down, not toward zero");
        let g7 = Geometry::new(7, 10);
        for t in -50..50 {
            let s = g7.slot_time(t);
            assert!(s <= t && t < s + 7 && s.rem_euclid(7) == 0, "t={t} s={s}");
        }
    }

    #[test]
    fn index_wraps_after_one_span() {
        let g = g();
        let span = g.span_ms();
        assert_eq!(g.index(0), 0);
        assert_eq!(g.index(P), 1);
        assert_eq!(g.index(span - P), DEFAULT_SLOTS as usize - 1, "last slot");
        assert_eq!(g.index(span), 0, "wraps");
        assert_eq!(g.index(span + P), 1);
        assert_eq!(g.index(-P), DEFAULT_SLOTS as usize - 1);
        let t = 1_795_471_763_000;
        assert_eq!(g.index(t), g.index(t + span));
        assert_ne!(g.index(t), g.index(t + span - P));
    }

    #[test]
    fn placement_at_the_window_edges() {
        let g = g();
        let r = 1_795_471_763_000; // read pointer, a slot time
        assert_eq!(g.place(r - 1, r, r), Placement::Due, "last ms of the closed slot");
        assert_eq!(g.place(r, r, r), Placement::Wheel(r), "first ms of the open slot");
        assert_eq!(g.place(r + 999, r, r), Placement::Wheel(r));
        let end = g.window_end(r);
        assert_eq!(g.place(end, r, r), Placement::Wheel(end));
        assert_eq!(g.place(end + P - 1, r, r), Placement::Wheel(end), "last ms of the last open slot");
        match g.place(end + P, r, r) {
            Placement::Roll(s) => {
                assert!(s >= r && s <= end, "rolled into the window: {s}");
                assert_eq!(s, g.slot_time(end + P - g.span_ms() / 2));
            }
            p => panic!("expected a roll, got {p:?}"),
        }
    }

    #[test]
    fn the_window_follows_the_committed_read_time() {
        let g = g();
        let r = 1_795_471_763_000;
        let lagging = r - 100 * P; // fires of 100 slots still in flight
        let end = g.window_end(lagging);
        assert_eq!(g.place(end, r, lagging), Placement::Wheel(end));
        assert!(matches!(g.place(end + P, r, lagging), Placement::Roll(_)), "beyond the committed window");
        // dequeue-get may not run a span ahead of what has fired.
        assert!(g.may_close(end - P, lagging));
        assert!(!g.may_close(end, lagging));
        // Even at the limit, a roll lands in an open slot.
        let read = end;
        match g.place(read + g.span_ms(), read, lagging) {
            Placement::Roll(s) => assert!(s >= read && s <= end),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn rolls_land_in_the_window_and_keep_their_spread() {
        let g = g();
        let r = 1_795_471_763_000;
        let end = g.window_end(r);
        let half = g.span_ms() / 2;
        let ten_years = 3650 * 86_400_000i64;
        let mut targets = std::collections::BTreeSet::new();
        for i in 0..10_000i64 {
            let d = end + P + i * 7_919_000 % ten_years; // spread over ten years
            match g.place(d, r, r) {
                Placement::Roll(s) => {
                    assert!(s >= r && s <= end, "d={d} s={s}");
                    assert!((d - s).rem_euclid(half) < P, "shifted by whole half-spans");
                    targets.insert(s);
                }
                Placement::Wheel(s) => assert!(s <= end),
                Placement::Due => panic!("future message due"),
            }
        }
        assert!(targets.len() > 9_000, "rolled messages bunched into {} slots", targets.len());
        // A rolled message placed again when its roll slot fires moves strictly closer.
        let d = r + 3 * g.span_ms() + 12_345;
        let mut read = r;
        let mut hops = 0;
        loop {
            match g.place(d, read, read) {
                Placement::Roll(s) => {
                    assert!(s > read - P && s < d);
                    read = s + P;
                    hops += 1;
                }
                Placement::Wheel(s) => {
                    assert_eq!(s, g.slot_time(d));
                    break;
                }
                Placement::Due => panic!("never due before its slot"),
            }
            assert!(hops < 10);
        }
        assert!(hops >= 4, "three spans need several half-span hops, got {hops}");
    }
}
