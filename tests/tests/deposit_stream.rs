//! Pipelined deposits (`/tern/deposit/1`) against a real relay process: a burst from one
//! sender to one device is stored complete and in send order; refusals in the middle of a
//! window come back for exactly the refused deposits, with the codes request/response
//! deposits get; and when the relay is killed mid-window every deposit it did not answer
//! fails (none hangs), while every one it answered is in the mailbox after a restart; and
//! streams that many devices open at the same moment are all taken.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tern_relay::{
    PeerId,
    client::{Client, Config, Keypair},
    pipeline::{Pipeline, Ticket},
    rpc::{RequestError, Requests as _, deposit_request},
    wire::{ErrorCode, mailbox},
};
use tern_tests::support::{Relay, runtime};

/// Longest wait for a burst to be answered (a 2-core CI machine, debug build).
const WAIT: Duration = Duration::from_secs(120);

/// A relay whose rate limits are out of the way (each test sets its own quotas).
const FAST: &str = "[rate]\nrequests_per_sec = 1000000.0\nrequests_burst = 1000000.0\n\
                    deposits_per_sec = 1000000.0\ndeposits_burst = 1000000.0\n\
                    ip_requests_per_sec = 1000000.0\nip_requests_burst = 1000000.0\n";

async fn connect(relay: &Relay, key: Keypair) -> Client {
    let (c, _events) = Client::connect(key, relay.addr.parse().unwrap(), Config::default())
        .await
        .unwrap();
    c
}

/// Submits a deposit of `body` for `to` on `pipe`, in order after those before it.
async fn submit(pipe: &Pipeline, to: PeerId, body: Vec<u8>) -> Ticket {
    pipe.submit(&deposit_request(vec![to], Vec::new(), None, body))
        .await
        .unwrap()
}

/// Every message in `owner`'s mailbox, oldest first, as its ciphertext.
async fn mailbox_of(relay: &Relay, owner: Keypair) -> Vec<Vec<u8>> {
    let c = connect(relay, owner).await;
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (page, more) = c.fetch(after, mailbox::MAX_FETCH_MESSAGES).await.unwrap();
        if let Some(last) = page.last() {
            after = last.id;
        }
        out.extend(page.into_iter().map(|e| e.ciphertext.into_vec()));
        if !more {
            return out;
        }
    }
}

/// Deposits `n` numbered bodies for `to` on a new stream with `window` deposits in flight
/// (checking it never holds more), one after another; their answers, in order.
async fn burst(
    relay: &Relay,
    window: usize,
    to: PeerId,
    n: usize,
) -> Vec<Result<(u64, Vec<mailbox::Refusal>), RequestError>> {
    let sender = connect(relay, Keypair::generate_ed25519()).await;
    let pipe = sender.open_pipeline(window).await.unwrap();
    let mut tickets = Vec::with_capacity(n);
    for i in 0..n {
        tickets.push(submit(&pipe, to, body(i)).await);
        assert!(
            pipe.in_flight() <= window,
            "the window bounds what is in flight"
        );
    }
    let mut answers = Vec::with_capacity(n);
    for t in tickets {
        answers.push(tokio::time::timeout(WAIT, t.answer()).await.unwrap());
    }
    answers
}

fn body(i: usize) -> Vec<u8> {
    format!("deposit {i:05}").into_bytes()
}

#[test]
fn a_pipelined_burst_to_one_device_is_stored_complete_and_in_order() {
    const N: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_metrics(
        dir.path(),
        &format!("{FAST}[mailbox]\nmax_messages = 10000\nshare_percent = 100\n"),
    )
    .unwrap();
    let rt = runtime();
    let device = Keypair::generate_ed25519();
    let to = device.public().to_peer_id();
    let answers = rt.block_on(burst(&relay, 64, to, N));
    let ids: Vec<u64> = answers
        .into_iter()
        .map(|a| {
            let (id, refused) = a.expect("every deposit of the burst is stored");
            assert!(refused.is_empty());
            id
        })
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "the relay numbers the deposits in the order of the stream"
    );
    assert_eq!(
        relay.metric("tern_relay_stream_deposits_total").unwrap(),
        N as f64,
        "the burst went over the deposit stream"
    );
    let stored = rt.block_on(mailbox_of(&relay, device));
    let expected: Vec<Vec<u8>> = (0..N).map(body).collect();
    assert_eq!(stored.len(), N, "complete");
    assert!(stored == expected, "in the order they were sent");
}

/// Deposit streams opened at the same moment by many devices (what every node does when its
/// relay comes back) are all taken: the relay queues new streams rather than dropping all
/// but one of those that arrive together. A dropped stream fails its deposits, and its node
/// falls back to one request at a time.
#[test]
fn deposit_streams_opened_together_are_all_taken() {
    const CLIENTS: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_metrics(dir.path(), FAST).unwrap();
    let rt = runtime();
    let device = Keypair::generate_ed25519();
    let to = device.public().to_peer_id();
    let answers = rt.block_on(async {
        let mut clients = Vec::with_capacity(CLIENTS);
        for _ in 0..CLIENTS {
            clients.push(connect(&relay, Keypair::generate_ed25519()).await);
        }
        let start = Arc::new(tokio::sync::Barrier::new(CLIENTS));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, c) in clients.into_iter().enumerate() {
            let start = start.clone();
            tasks.spawn(async move {
                start.wait().await;
                let pipe = c.open_pipeline(4).await?;
                let ticket = pipe
                    .submit(&deposit_request(vec![to], Vec::new(), None, body(i)))
                    .await?;
                let answer = ticket.answer().await;
                drop(c);
                answer
            });
        }
        tokio::time::timeout(WAIT, tasks.join_all()).await.unwrap()
    });
    let failed: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {CLIENTS} streams failed, the first with {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(
        relay.metric("tern_relay_stream_deposits_total").unwrap(),
        CLIENTS as f64,
        "every deposit went over its stream"
    );
    let mut stored = rt.block_on(mailbox_of(&relay, device));
    stored.sort();
    let mut expected: Vec<Vec<u8>> = (0..CLIENTS).map(body).collect();
    expected.sort();
    assert!(stored == expected, "each deposit is stored once");
}

/// The outcome of a deposit, as a test compares it: stored, or refused with a code.
fn outcome(r: Result<(u64, Vec<mailbox::Refusal>), RequestError>) -> Option<ErrorCode> {
    match r {
        Ok((_, refused)) => {
            assert!(refused.is_empty());
            None
        }
        Err(e) => Some(
            e.code()
                .unwrap_or_else(|| panic!("expected a refusal, got {e}")),
        ),
    }
}

#[test]
fn refusals_in_a_window_are_answered_for_exactly_the_refused_deposits() {
    // Deposits alternate between two mailboxes of 40 messages: the first takes 60, so its
    // last 20 are refused while the deposits around them (30 for the second) are stored;
    // then some are too large, refused before storage, among stored ones.
    const QUOTA: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        &format!(
            "{FAST}[mailbox]\nmax_messages = {QUOTA}\nshare_percent = 100\n\
             max_ciphertext_bytes = 4096\n"
        ),
    )
    .unwrap();
    let rt = runtime();
    // One plan of deposits: (which mailbox, ciphertext).
    let plan: Vec<(usize, Vec<u8>)> = (0..100)
        .map(|i| {
            let size = if i % 10 == 7 { 5000 } else { 16 };
            let mut b = body(i);
            b.resize(size, b'.');
            (usize::from(i % 3 == 0), b)
        })
        .collect();
    // The same plan over request/response, one deposit after another, to two other
    // mailboxes: what the stream must answer, deposit for deposit.
    let (piped, requested, stored) = rt.block_on(async {
        let sender = connect(&relay, Keypair::generate_ed25519()).await;
        let piped_boxes = [Keypair::generate_ed25519(), Keypair::generate_ed25519()];
        let rr_boxes = [Keypair::generate_ed25519(), Keypair::generate_ed25519()];
        let peer = |k: &Keypair| k.public().to_peer_id();
        let pipe = sender.open_pipeline(128).await.unwrap();
        let mut tickets = Vec::new();
        for (m, b) in &plan {
            tickets.push(submit(&pipe, peer(&piped_boxes[*m]), b.clone()).await);
        }
        let mut piped = Vec::new();
        for t in tickets {
            piped.push(outcome(
                tokio::time::timeout(WAIT, t.answer()).await.unwrap(),
            ));
        }
        let mut requested = Vec::new();
        for (m, b) in &plan {
            requested.push(outcome(
                sender
                    .deposit(vec![peer(&rr_boxes[*m])], None, b.clone())
                    .await,
            ));
        }
        let [a, b] = piped_boxes;
        let stored = [mailbox_of(&relay, a).await, mailbox_of(&relay, b).await];
        (piped, requested, stored)
    });
    assert_eq!(
        piped, requested,
        "the same answer as a request, deposit for deposit"
    );
    let refused: Vec<usize> = (0..plan.len()).filter(|i| piped[*i].is_some()).collect();
    assert!(
        piped.contains(&Some(ErrorCode::TooLarge)),
        "oversized deposits are refused: {piped:?}"
    );
    assert!(
        piped
            .iter()
            .any(|c| matches!(c, Some(ErrorCode::QuotaCount | ErrorCode::ShareFull))),
        "deposits over the quota are refused: {piped:?}"
    );
    // Exactly the deposits not refused are stored, each in its mailbox, in order.
    for (m, stored) in stored.iter().enumerate() {
        let expected: Vec<Vec<u8>> = plan
            .iter()
            .enumerate()
            .filter(|(i, (to, _))| *to == m && !refused.contains(i))
            .map(|(_, (_, b))| b.clone())
            .collect();
        assert_eq!(stored.len(), expected.len());
        assert!(
            *stored == expected,
            "mailbox {m} holds what was not refused"
        );
    }
    assert_eq!(stored[0].len(), QUOTA, "the full mailbox took its quota");
}

#[test]
fn the_deposit_rate_limit_applies_on_the_stream() {
    // A burst of 20, then one a second: of 60 deposits in one window, those past the
    // burst are refused `RateLimited` with a retry time, and only the others are stored.
    const N: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        "[rate]\ndeposits_per_sec = 1.0\ndeposits_burst = 20.0\n\
         requests_per_sec = 1000000.0\nrequests_burst = 1000000.0\n\
         [mailbox]\nshare_percent = 100\n",
    )
    .unwrap();
    let rt = runtime();
    let device = Keypair::generate_ed25519();
    let to = device.public().to_peer_id();
    let started = std::time::Instant::now();
    let answers = rt.block_on(burst(&relay, N, to, N));
    let refill = started.elapsed().as_secs() as usize + 1;
    let mut stored_bodies = Vec::new();
    let mut limited = 0;
    for (i, a) in answers.into_iter().enumerate() {
        match a {
            Ok(_) => stored_bodies.push(body(i)),
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::RateLimited), "{e}");
                assert!(e.retry_after().is_some(), "a rate limit says when to retry");
                limited += 1;
            }
        }
    }
    assert!(stored_bodies.len() >= 20, "the burst is stored");
    assert!(
        stored_bodies.len() <= 20 + refill,
        "nothing past the rate is stored"
    );
    assert_eq!(limited, N - stored_bodies.len());
    let stored = rt.block_on(mailbox_of(&relay, device));
    assert!(
        stored == stored_bodies,
        "exactly the admitted deposits, in order"
    );
}

#[test]
fn a_relay_killed_mid_window_fails_what_it_did_not_answer_and_keeps_what_it_did() {
    const WINDOW: usize = 256;
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{FAST}[mailbox]\nmax_messages = 1000000\nshare_percent = 100\n");
    let mut relay = Relay::start(dir.path(), &config).unwrap();
    let rt = runtime();
    let device = Keypair::generate_ed25519();
    let to = device.public().to_peer_id();
    let sender = rt.block_on(connect(&relay, Keypair::generate_ed25519()));
    let pipe = rt.block_on(sender.open_pipeline(WINDOW)).unwrap();
    // A producer keeps the window full until the stream fails; answers are collected as
    // they come.
    let acked_so_far = Arc::new(AtomicUsize::new(0));
    let producer = {
        let pipe = pipe.clone();
        let acked_so_far = acked_so_far.clone();
        rt.spawn(async move {
            let mut answered = Vec::new();
            let mut waiting = std::collections::VecDeque::new();
            for i in 0.. {
                match pipe
                    .submit(&deposit_request(vec![to], Vec::new(), None, body(i)))
                    .await
                {
                    Ok(t) => {
                        let acked_so_far = acked_so_far.clone();
                        waiting.push_back((
                            i,
                            tokio::spawn(async move {
                                let r = t.answer().await;
                                if r.is_ok() {
                                    acked_so_far.fetch_add(1, Ordering::Relaxed);
                                }
                                r
                            }),
                        ));
                    }
                    Err(_) => break,
                }
                while waiting.front().is_some_and(|(_, h)| h.is_finished()) {
                    let (i, h) = waiting.pop_front().unwrap();
                    answered.push((i, h.await.unwrap()));
                }
            }
            for (i, h) in waiting {
                answered.push((i, h.await.unwrap()));
            }
            answered
        })
    };
    // Kill it once a good part of the work is answered, with the window full.
    let deadline = std::time::Instant::now() + WAIT;
    while acked_so_far.load(Ordering::Relaxed) < 500 {
        assert!(
            std::time::Instant::now() < deadline,
            "the relay stores deposits"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    relay.kill9();
    let answered = rt
        .block_on(async { tokio::time::timeout(WAIT, producer).await })
        .expect("every deposit in flight is answered or failed when the relay dies")
        .unwrap();
    assert!(!pipe.is_open(), "the stream is closed");
    let acked: Vec<usize> = answered
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| *i)
        .collect();
    let failed = answered.iter().filter(|(_, r)| r.is_err()).count();
    assert!(
        acked.len() >= 500,
        "acknowledged before the kill: {}",
        acked.len()
    );
    assert!(failed >= 1, "the deposits in flight failed");
    for (_, r) in &answered {
        if let Err(e) = r {
            assert!(
                matches!(e, RequestError::Transport(_)),
                "a dead relay is a transport failure, not a refusal: {e}"
            );
        }
    }
    // Not lost: every acknowledged deposit is in the mailbox after a restart (and anything
    // else stored is one that failed, which a node sends again).
    relay.start_again(&config).unwrap();
    let stored = rt.block_on(mailbox_of(&relay, device));
    let acked_bodies: Vec<Vec<u8>> = acked.iter().map(|i| body(*i)).collect();
    for b in &acked_bodies {
        assert!(
            stored.contains(b),
            "an acknowledged deposit survives the kill"
        );
    }
    assert!(stored.len() < acked.len() + failed + 1);
}

/// Submits `bodies` for `to` on `pipe`, each following the one before (the first following
/// `first`); their tickets.
async fn chain(pipe: &Pipeline, to: PeerId, bodies: &[Vec<u8>], first: Option<u64>) -> Vec<Ticket> {
    let mut before = first;
    let mut tickets = Vec::new();
    for b in bodies {
        let t = pipe
            .submit_following(
                deposit_request(vec![to], Vec::new(), None, b.clone()),
                before,
            )
            .await
            .unwrap();
        before = Some(t.seq());
        tickets.push(t);
    }
    tickets
}

/// The outcomes of `tickets`, in order.
async fn outcomes(tickets: Vec<Ticket>) -> Vec<Option<ErrorCode>> {
    let mut out = Vec::new();
    for t in tickets {
        out.push(outcome(
            tokio::time::timeout(WAIT, t.answer()).await.unwrap(),
        ));
    }
    out
}

#[test]
fn a_deposit_following_a_refused_one_is_refused_and_not_stored() {
    // Mailboxes of 5 messages. A chain of 5 to one device whose third is too large (the
    // event loop refuses it): the two after it are refused `OutOfOrder` and not stored,
    // while a deposit to another device that follows nothing, in the middle, is. Sent
    // again, the three complete the mailbox in order. A chain of 8 to a third device: the
    // sixth is over the quota (the storage writer refuses it), and the two after it are
    // refused too.
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        &format!(
            "{FAST}[mailbox]\nmax_messages = 5\nshare_percent = 100\nmax_ciphertext_bytes = 4096\n"
        ),
    )
    .unwrap();
    let rt = runtime();
    let (x, y, z) = (
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
    );
    let peer = |k: &Keypair| k.public().to_peer_id();
    let mut bodies: Vec<Vec<u8>> = (0..5).map(body).collect();
    let oversized = {
        let mut b = body(2);
        b.resize(5000, b'.');
        b
    };
    rt.block_on(async {
        let sender = connect(&relay, Keypair::generate_ed25519()).await;
        let pipe = sender.open_pipeline(64).await.unwrap();
        let mut sent = bodies.clone();
        sent[2] = oversized;
        let mut tickets = chain(&pipe, peer(&x), &sent[..3], None).await;
        let other = submit(&pipe, peer(&y), body(99)).await;
        tickets.extend(chain(&pipe, peer(&x), &sent[3..], Some(tickets[2].seq())).await);
        assert_eq!(
            outcomes(tickets).await,
            [
                None,
                None,
                Some(ErrorCode::TooLarge),
                Some(ErrorCode::OutOfOrder),
                Some(ErrorCode::OutOfOrder)
            ],
            "what follows a refused deposit is refused"
        );
        assert!(
            outcome(other.answer().await).is_none(),
            "a deposit outside the chain is stored"
        );
        assert_eq!(
            mailbox_of(&relay, x.clone()).await,
            bodies[..2],
            "nothing overtook the refused one"
        );
        // Sent again (the first follows one that was stored).
        let again = chain(&pipe, peer(&x), &bodies[2..], Some(1)).await;
        assert_eq!(outcomes(again).await, [None, None, None]);
        assert_eq!(mailbox_of(&relay, x.clone()).await, bodies, "in order");

        bodies = (10..18).map(body).collect();
        let tickets = chain(&pipe, peer(&z), &bodies, None).await;
        let got = outcomes(tickets).await;
        assert_eq!(got[..5], [None, None, None, None, None]);
        assert!(
            matches!(got[5], Some(ErrorCode::QuotaCount | ErrorCode::ShareFull)),
            "over the quota: {got:?}"
        );
        assert_eq!(
            got[6..],
            [Some(ErrorCode::OutOfOrder), Some(ErrorCode::OutOfOrder)]
        );
        assert_eq!(mailbox_of(&relay, z).await, bodies[..5]);
    });
}
