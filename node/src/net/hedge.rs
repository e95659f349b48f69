//! One answer from any of several relays (a contact's prekey or device list, which each of
//! their relays holds) without waiting on a slow one: a relay that is hung or overloaded
//! keeps its connection open and answers nothing, so asking the relays one after another
//! would wait out the request timeout at each such relay before asking the next.

use std::{future::Future, time::Duration};

use futures::stream::{FuturesUnordered, StreamExt};

/// How long the relays asked so far are given before the next is asked too. A relay on a
/// working path answers a claim in milliseconds; this is what a hung first relay costs.
pub const HEDGE_AFTER: Duration = Duration::from_secs(1);

/// Asks `ask(relay)` of `relays` in order and returns the first success. The next relay is
/// asked as soon as one fails, or when `after` passed with no answer from those asked so
/// far; they stay asked, and the first success from any of them is taken (the others are
/// dropped). A relay named twice is asked once. `None` with no relays; with every one
/// failed, the last error.
///
/// A relay asked only because another was slow may hand out a one-time key that is then
/// not used: that costs a key, which the device replaces, and only when a relay is slow.
pub async fn first_ok<R, T, E, Fut>(
    relays: impl IntoIterator<Item = R>,
    after: Duration,
    mut ask: impl FnMut(R) -> Fut,
) -> Option<Result<T, E>>
where
    R: PartialEq + Clone,
    Fut: Future<Output = Result<T, E>>,
{
    let mut named: Vec<R> = Vec::new();
    let mut rest = relays
        .into_iter()
        .filter(move |r| {
            let new = !named.contains(r);
            if new {
                named.push(r.clone());
            }
            new
        })
        .peekable();
    let mut asked = FuturesUnordered::new();
    let mut last = None;
    loop {
        if asked.is_empty() {
            match rest.next() {
                Some(relay) => asked.push(ask(relay)),
                None => return last,
            }
        }
        let more = rest.peek().is_some();
        tokio::select! {
            Some(answer) = asked.next() => match answer {
                Ok(value) => return Some(Ok(value)),
                Err(e) => {
                    last = Some(Err(e));
                    if let Some(relay) = rest.next() {
                        asked.push(ask(relay));
                    }
                }
            },
            () = tokio::time::sleep(after), if more => {
                if let Some(relay) = rest.next() {
                    asked.push(ask(relay));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::time::Instant;

    use super::*;

    /// What each relay of a test does when asked.
    #[derive(Clone, Copy, PartialEq)]
    enum Relay {
        /// Answers `Ok(id)` after this long.
        Answers(u32, Duration),
        /// Fails at once with `Err(id)`.
        Fails(u32),
        /// Never answers.
        Hangs,
    }

    /// Runs `first_ok` over `relays` (bounded); returns the answer, the relays asked (by index, in
    /// order) and the (paused) time it took.
    async fn run(relays: &[Relay]) -> (Option<Result<u32, u32>>, Vec<usize>, Duration) {
        let asked = Mutex::new(Vec::new());
        let start = Instant::now();
        let work = first_ok(relays.iter().copied().enumerate(), HEDGE_AFTER, |(i, r)| {
            asked.lock().unwrap().push(i);
            async move {
                match r {
                    Relay::Answers(v, delay) => {
                        tokio::time::sleep(delay).await;
                        Ok(v)
                    }
                    Relay::Fails(v) => Err(v),
                    Relay::Hangs => std::future::pending().await,
                }
            }
        });
        // Bounded: with time paused, a wait on nothing but a hung relay ends here at once.
        let answer = tokio::time::timeout(Duration::from_secs(3600), work)
            .await
            .expect("an answer before the bound");
        (answer, asked.into_inner().unwrap(), start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_relay_costs_the_hedge_not_its_timeout() {
        let fast = Duration::from_millis(5);
        let (answer, asked, took) = run(&[Relay::Hangs, Relay::Answers(2, fast)]).await;
        assert_eq!(answer, Some(Ok(2)));
        assert_eq!(asked, [0, 1]);
        assert_eq!(took, HEDGE_AFTER + fast);
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_answering_in_time_is_the_only_one_asked() {
        let quick = HEDGE_AFTER / 2;
        let (answer, asked, took) = run(&[Relay::Answers(1, quick), Relay::Hangs]).await;
        assert_eq!(answer, Some(Ok(1)));
        assert_eq!(asked, [0]);
        assert_eq!(took, quick);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_asks_the_next_at_once_and_a_slow_first_answer_still_counts() {
        // The first is slow (past the hedge), the second fails at once, the third hangs:
        // all are asked, and the slow first one's answer is taken.
        let slow = HEDGE_AFTER * 3;
        let (answer, asked, took) =
            run(&[Relay::Answers(1, slow), Relay::Fails(2), Relay::Hangs]).await;
        assert_eq!(answer, Some(Ok(1)));
        assert_eq!(asked, [0, 1, 2]);
        assert_eq!(took, slow);
        let (answer, asked, took) =
            run(&[Relay::Fails(1), Relay::Answers(2, Duration::ZERO)]).await;
        assert_eq!(answer, Some(Ok(2)));
        assert_eq!(asked, [0, 1]);
        assert_eq!(took, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_named_twice_is_asked_once() {
        let asked = Mutex::new(Vec::new());
        let answer = first_ok([7, 7, 8], HEDGE_AFTER, |r: u32| {
            asked.lock().unwrap().push(r);
            async move { if r == 7 { Err(r) } else { Ok(r) } }
        })
        .await;
        assert_eq!(answer, Some(Ok(8)));
        assert_eq!(asked.into_inner().unwrap(), [7, 8]);
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_relay_failed_the_last_error_and_with_none_nothing() {
        let (answer, asked, _) = run(&[Relay::Fails(1), Relay::Fails(2)]).await;
        assert_eq!(answer, Some(Err(2)));
        assert_eq!(asked, [0, 1]);
        assert_eq!(run(&[]).await.0, None);
    }
}
