//! Transactions against a model (issue 17): random prepares (1..=5 messages), commits,
//! rollbacks (some repeated, some the other way), checks, process crashes and clock steps, on
//! the simulated clock. After every step: each transaction's state is the model's; the
//! messages visible in the topic are exactly those of committed transactions, each once (never
//! part of one, never one rolled back or prepared, never lost after a commit).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chime::service::transactions::{ResolvedBy, Timing, TxnSend, TxnState};
use chime::service::ServiceError;
use chime::store::NewMessage;
use common::binary::Rng;
use common::consumer::rt;
use common::lifecycle::{H, T0, TOPIC};

struct Model {
    /// Ids in the order prepared (ids are random: picks go by this order, so a seed replays).
    order: Vec<String>,
    state: BTreeMap<String, TxnState>,
    /// Message ids of each committed transaction.
    committed: BTreeMap<String, Vec<String>>,
}

fn check(h: &H, m: &Model) {
    for (id, want) in &m.state {
        let got = h.broker.transaction(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(got.state, *want, "{id}");
    }
    let visible = h.visible();
    let want: BTreeSet<&String> = m.committed.values().flatten().collect();
    let got: BTreeSet<&String> = visible.keys().collect();
    assert_eq!(got, want, "exactly the committed transactions' messages are visible");
    assert!(visible.values().all(|&n| n == 1), "each once: {visible:?}");
}

#[test]
fn random_prepare_commit_rollback_check_and_crashes_match_the_model() {
    let _failpoints = fail::FailScenario::setup();
    let seed = std::env::var("TXN_MODEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(17);
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut h = H::new(dir.path());
    let mut m = Model { order: Vec::new(), state: BTreeMap::new(), committed: BTreeMap::new() };
    let rt = rt();
    for step in 0..300 {
        let ids: Vec<String> = m.order.clone();
        let pick = |rng: &mut Rng| ids[rng.range(0, ids.len() as u64 - 1) as usize].clone();
        match rng.range(0, 99) {
            0..=34 => {
                let n = rng.range(1, 5);
                let msgs = (0..n)
                    .map(|i| TxnSend {
                        topic: TOPIC.into(),
                        message: NewMessage {
                            body: format!("s{step}-{i}").into_bytes(),
                            born_ms: T0,
                            ..Default::default()
                        },
                        timing: Timing::Now,
                    })
                    .collect();
                let info = rt.block_on(h.broker.prepare("pg", 1000, msgs)).unwrap();
                m.order.push(info.id.clone());
                m.state.insert(info.id, TxnState::Prepared);
            }
            35..=79 if !ids.is_empty() => {
                let id = pick(&mut rng);
                let want = if rng.range(0, 1) == 0 { TxnState::Committed } else { TxnState::RolledBack };
                match (rt.block_on(h.broker.resolve(&id, want, ResolvedBy::Client)), m.state[&id]) {
                    (Ok(info), TxnState::Prepared) => {
                        assert_eq!(info.state, want);
                        if want == TxnState::Committed {
                            m.committed
                                .insert(id.clone(), info.messages.iter().map(|x| x.message_id.clone()).collect());
                        }
                        m.state.insert(id, want);
                    }
                    (Ok(info), was) => assert_eq!((info.state, was), (want, want), "{id}: a repeat answers the same"),
                    (Err(ServiceError::Conflict(_)), was) => assert!(was != want && was != TxnState::Prepared, "{id}"),
                    (Err(e), was) => panic!("step {step}: {id} ({was:?}) to {want:?}: {e}"),
                }
            }
            80..=87 => {
                let got = rt.block_on(h.broker.check("pg", 5)).unwrap();
                for c in got {
                    assert_eq!(m.state[&c.info.id], TxnState::Prepared, "only prepared ones are checked");
                }
            }
            88..=92 => h.clock.advance(rng.range(0, 20_000) as i64),
            _ => {
                h.groups.persist_all().unwrap();
                h = h.crash();
            }
        }
        check(&h, &m);
    }
    let n = |s: TxnState| m.state.values().filter(|&&x| x == s).count();
    eprintln!(
        "seed {seed}: {} prepared, {} committed, {} rolled back",
        n(TxnState::Prepared),
        n(TxnState::Committed),
        n(TxnState::RolledBack)
    );
    assert!(n(TxnState::Committed) > 5 && n(TxnState::RolledBack) > 5, "the run exercised both");
}

/// Races decided under one lock: a commit and a rollback of the same transaction sent at
/// once, exactly one wins and the other is a conflict (never both, never neither); a check
/// racing a commit either hands it out first (counted) or not at all, and the commit stands.
#[test]
fn racing_resolutions_and_checks_have_one_winner() {
    let _failpoints = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let h = H::new(dir.path());
    let send = |body: &str| TxnSend {
        topic: TOPIC.into(),
        message: NewMessage { body: body.as_bytes().to_vec(), born_ms: T0, ..Default::default() },
        timing: Timing::Now,
    };
    // Each order once, deterministically: the second resolution is a conflict; a check before
    // a commit is counted, one after it hands nothing out.
    let rt1 = rt();
    let id = rt1.block_on(h.broker.prepare("pg", 1000, vec![send("seq-1")])).unwrap().id;
    h.clock.advance(1000);
    assert_eq!(rt1.block_on(h.broker.check("pg", 10)).unwrap().len(), 1);
    rt1.block_on(h.broker.resolve(&id, TxnState::Committed, ResolvedBy::Client)).unwrap();
    let r = rt1.block_on(h.broker.resolve(&id, TxnState::RolledBack, ResolvedBy::Client));
    assert!(matches!(r, Err(ServiceError::Conflict(_))), "{r:?}");
    assert_eq!(h.broker.transaction(&id).unwrap().checks, 1);
    let id = rt1.block_on(h.broker.prepare("pg", 1000, vec![send("seq-2")])).unwrap().id;
    h.clock.advance(1000);
    rt1.block_on(h.broker.resolve(&id, TxnState::RolledBack, ResolvedBy::Client)).unwrap();
    assert!(rt1.block_on(h.broker.check("pg", 10)).unwrap().is_empty(), "resolved: not handed out");
    let r = rt1.block_on(h.broker.resolve(&id, TxnState::Committed, ResolvedBy::Client));
    assert!(matches!(r, Err(ServiceError::Conflict(_))), "{r:?}");
    assert_eq!(h.broker.transaction(&id).unwrap().checks, 0);
    let (mut commits, mut rollbacks, mut checked) = (1, 0, 0);
    for round in 0..40 {
        let id = rt().block_on(h.broker.prepare("pg", 1000, vec![send(&format!("r{round}"))])).unwrap().id;
        h.clock.advance(1000);
        let barrier = std::sync::Barrier::new(3);
        // Runtimes built before the barrier, so the three start level.
        let (rc, rr, rk) = (rt(), rt(), rt());
        let (c, r, k) = std::thread::scope(|s| {
            let c = s.spawn(|| {
                barrier.wait();
                rc.block_on(h.broker.resolve(&id, TxnState::Committed, ResolvedBy::Client))
            });
            let r = s.spawn(|| {
                barrier.wait();
                rr.block_on(h.broker.resolve(&id, TxnState::RolledBack, ResolvedBy::Client))
            });
            let k = s.spawn(|| {
                barrier.wait();
                rk.block_on(h.broker.check("pg", 10)).unwrap()
            });
            (c.join().unwrap(), r.join().unwrap(), k.join().unwrap())
        });
        let state = h.broker.transaction(&id).unwrap();
        match (c, r) {
            (Ok(_), Err(ServiceError::Conflict(_))) => {
                commits += 1;
                assert_eq!(state.state, TxnState::Committed);
            }
            (Err(ServiceError::Conflict(_)), Ok(_)) => {
                rollbacks += 1;
                assert_eq!(state.state, TxnState::RolledBack);
            }
            (c, r) => panic!("round {round}: commit {c:?}, rollback {r:?}"),
        }
        let handed = k.iter().filter(|x| x.info.id == id).count();
        assert!(handed <= 1);
        checked += handed;
        assert_eq!(state.checks as usize, handed, "round {round}: counted iff handed out");
    }
    eprintln!("commit won {commits}, rollback {rollbacks}; the check was first {checked} times");
    let visible = h.visible().len();
    assert_eq!(visible, commits, "one message per committed round, none of the rolled back");
}
