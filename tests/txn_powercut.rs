//! Transactions under a simulated power cut (`src/store/powercut.rs`: only what was fsync'd
//! survives). A commit is one batch with its messages, so a cut keeps it whole or not at all:
//! cut before the commit was flushed, the transaction is prepared again (none of its messages
//! visible) and can be committed then; cut after, it is committed with all of them. A prepared
//! transaction that was flushed survives; a rollback likewise.
//!
//! Under the default profile (these tests: flushes only when they say) a 200 is given before
//! the flush, as a 201 is; under `durable` the flush comes before the answer, which is the
//! "after" case here.
//!
//! A file of its own: the simulation records one data directory per process.

mod common;

use std::sync::Arc;

use chime::clock::ManualClock;
use chime::service::transactions::{ResolvedBy, Timing, TxnSend, TxnState};
use chime::store::NewMessage;
use common::consumer::rt;
use common::lifecycle::{half_full, open_with, Params, Recorded, H, T0, TOPIC};
use parking_lot::Mutex;

fn params() -> Params {
    Params { flush_ms: 3_600_000, persist_ms: 3_600_000, ..Params::default() }
}

fn prepare(h: &H, bodies: &[&str]) -> String {
    let msgs = bodies
        .iter()
        .map(|b| TxnSend {
            topic: TOPIC.into(),
            message: NewMessage { body: b.as_bytes().to_vec(), born_ms: T0, ..Default::default() },
            timing: Timing::Now,
        })
        .collect();
    rt().block_on(h.broker.prepare("pg", 1000, msgs)).unwrap().id
}

fn open(dir: &std::path::Path) -> H {
    open_with(dir, ManualClock::new(T0), Arc::new(Mutex::new(half_full())), params())
}

#[test]
fn a_commit_survives_a_power_cut_whole_or_not_at_all() {
    let scenario = fail::FailScenario::setup();
    let (h, rec) = Recorded::open(params());
    let committed = prepare(&h, &["c1", "c2", "c3"]);
    let rolled = prepare(&h, &["r1"]);
    h.store.flush_all().unwrap();
    let lost = prepare(&h, &["never flushed"]);
    let c = rt().block_on(h.broker.resolve(&committed, TxnState::Committed, ResolvedBy::Client)).unwrap();
    let ids: Vec<String> = c.messages.iter().map(|m| m.message_id.clone()).collect();
    rt().block_on(h.broker.resolve(&rolled, TxnState::RolledBack, ResolvedBy::Client)).unwrap();
    let before = rec.cut("cut-before-flush");
    h.store.flush_all().unwrap();
    let after = rec.cut("cut-after-flush");
    drop(h);

    // Before the flush: both prepared again, nothing visible; the unflushed prepare is gone.
    let h = open(&before);
    let state = |h: &H, id: &str| h.broker.transaction(id).map(|t| t.state);
    assert_eq!(state(&h, &committed).unwrap(), TxnState::Prepared);
    assert_eq!(state(&h, &rolled).unwrap(), TxnState::Prepared);
    assert!(state(&h, &lost).is_err(), "a prepare the cut took is unknown");
    assert!(h.visible().is_empty(), "no part of a transaction: {:?}", h.visible());
    let again = rt().block_on(h.broker.resolve(&committed, TxnState::Committed, ResolvedBy::Client)).unwrap();
    assert_eq!(again.messages.len(), 3);
    assert_eq!(h.visible().len(), 3, "committed after the restart: all of it");
    drop(h);

    // After the flush: committed with all its messages, the rollback held.
    let h = open(&after);
    assert_eq!(state(&h, &committed).unwrap(), TxnState::Committed);
    assert_eq!(state(&h, &rolled).unwrap(), TxnState::RolledBack);
    let visible: Vec<String> = h.visible().into_keys().collect();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(visible, want, "each of its messages, once");
    assert_eq!(h.broker.transaction(&committed).unwrap().messages.len(), 3);
    drop(h);

    // Torn inside the commit's batch: the cut came while its pages were being written, so the
    // disk holds its first message but not the rest (nothing of it was fsync'd: the checkpoint
    // is the one before it). Recovery drops the batch whole: the transaction is prepared again
    // with none of its messages visible, not half-applied.
    let torn = rec.tmp.path().join("torn");
    copy_dir(&before, &torn);
    let (first, second): (chime::store::MessageId, chime::store::MessageId) =
        (ids[0].parse().unwrap(), ids[1].parse().unwrap());
    let base = std::fs::read_dir(after.join("commitlog"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.parse::<u64>().ok())
        .filter(|&b| b <= first.offset)
        .max()
        .unwrap();
    {
        use std::os::unix::fs::FileExt;
        let name = format!("{base:020}");
        let mut part = vec![0u8; (second.offset - first.offset) as usize];
        std::fs::File::open(after.join("commitlog").join(&name))
            .unwrap()
            .read_exact_at(&mut part, first.offset - base)
            .unwrap();
        assert!(part.iter().any(|&b| b != 0), "the premise: the first message's bytes are there");
        let f = std::fs::OpenOptions::new().write(true).open(torn.join("commitlog").join(&name)).unwrap();
        f.write_all_at(&part, first.offset - base).unwrap();
    }
    let h = open(&torn);
    assert_eq!(state(&h, &committed).unwrap(), TxnState::Prepared, "the torn commit is undone whole");
    assert!(h.visible().is_empty(), "no part of the torn commit is visible: {:?}", h.visible());
    scenario.teardown();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}
