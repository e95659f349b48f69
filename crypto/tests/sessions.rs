//! Pairwise sessions: round trips, session races, archived sessions, and a property test over
//! random loss, reordering, duplication and corruption between several devices.

mod common;

use std::collections::{HashMap, HashSet};

use common::Device;
use proptest::prelude::*;
use tern_crypto::session::{PeerSessions, SessionError};

#[test]
fn first_message_starts_session_and_replies_flow() {
    let mut alice = Device::new("alice");
    let mut bob = Device::new("bob");
    let mut a_to_b = alice.sessions_with(&bob);
    let mut b_to_a = bob.sessions_with(&alice);

    assert!(matches!(
        a_to_b.encrypt(b"x"),
        Err(SessionError::NoSession(_))
    ));
    a_to_b.start(&alice.keys, &bob.claim()).unwrap();
    let m1 = a_to_b.encrypt(b"hello bob").unwrap();
    let d = b_to_a.decrypt(&mut bob.keys, &m1).unwrap();
    assert_eq!(&**d.plaintext, b"hello bob");
    assert!(d.new_session);
    let r1 = b_to_a.encrypt(b"hi alice").unwrap();
    let d = a_to_b.decrypt(&mut alice.keys, &r1).unwrap();
    assert_eq!(&**d.plaintext, b"hi alice");
    assert!(!d.new_session);
    assert_eq!(a_to_b.current_session_id(), b_to_a.current_session_id());

    // A duplicate is recognised as such and does not decrypt twice.
    assert!(matches!(
        b_to_a.decrypt(&mut bob.keys, &m1),
        Err(SessionError::Duplicate(_))
    ));
}

#[test]
fn session_race_loses_nothing_and_settles() {
    let mut alice = Device::new("alice");
    let mut bob = Device::new("bob");
    let mut a = alice.sessions_with(&bob);
    let mut b = bob.sessions_with(&alice);
    // Both start at the same moment, each from the other's prekey.
    a.start(&alice.keys, &bob.claim()).unwrap();
    b.start(&bob.keys, &alice.claim()).unwrap();
    let from_a: Vec<_> = (0..3)
        .map(|i| a.encrypt(format!("a{i}").as_bytes()).unwrap())
        .collect();
    let from_b: Vec<_> = (0..3)
        .map(|i| b.encrypt(format!("b{i}").as_bytes()).unwrap())
        .collect();
    for (i, m) in from_a.iter().enumerate() {
        assert_eq!(
            &**b.decrypt(&mut bob.keys, m).unwrap().plaintext,
            format!("a{i}").as_bytes()
        );
    }
    for (i, m) in from_b.iter().enumerate() {
        assert_eq!(
            &**a.decrypt(&mut alice.keys, m).unwrap().plaintext,
            format!("b{i}").as_bytes()
        );
    }
    // Each side now holds both sessions.
    assert_eq!(a.archived_count(), 1);
    assert_eq!(b.archived_count(), 1);
    // One more exchange: after it both sides use the same session.
    let m = a.encrypt(b"settle").unwrap();
    assert_eq!(
        &**b.decrypt(&mut bob.keys, &m).unwrap().plaintext,
        b"settle"
    );
    let r = b.encrypt(b"settled").unwrap();
    assert_eq!(
        &**a.decrypt(&mut alice.keys, &r).unwrap().plaintext,
        b"settled"
    );
    assert_eq!(a.current_session_id(), b.current_session_id());
}

#[test]
fn archived_session_still_decrypts_late_messages() {
    let alice = Device::new("alice");
    let mut bob = Device::new("bob");
    let mut a = alice.sessions_with(&bob);
    let mut b = bob.sessions_with(&alice);
    a.start(&alice.keys, &bob.claim()).unwrap();
    let first = a.encrypt(b"old session").unwrap();
    b.decrypt(&mut bob.keys, &first).unwrap();
    let late = a.encrypt(b"late on old session").unwrap();
    // Alice starts afresh (for example after failing to decrypt something).
    a.start(&alice.keys, &bob.claim()).unwrap();
    let fresh = a.encrypt(b"new session").unwrap();
    assert!(b.decrypt(&mut bob.keys, &fresh).unwrap().new_session);
    assert_eq!(b.archived_count(), 1);
    // The late message on the old session decrypts from the archive.
    assert_eq!(
        &**b.decrypt(&mut bob.keys, &late).unwrap().plaintext,
        b"late on old session"
    );
}

#[test]
fn foreign_and_garbage_messages_fail_cleanly() {
    let mut alice = Device::new("alice");
    let mut bob = Device::new("bob");
    let mut carol = Device::new("carol");
    let mut b_from_a = bob.sessions_with(&alice);
    // Carol's prekey message passed off as Alice's: the identity key does not match.
    let mut c = carol.sessions_with(&bob);
    c.start(&carol.keys, &bob.claim()).unwrap();
    let from_carol = c.encrypt(b"not alice").unwrap();
    assert!(matches!(
        b_from_a.decrypt(&mut bob.keys, &from_carol),
        Err(SessionError::SessionCreation { .. })
    ));
    // A normal message from a session Bob never had.
    let mut a = alice.sessions_with(&carol);
    a.start(&alice.keys, &carol.claim()).unwrap();
    let m = a.encrypt(b"to carol").unwrap();
    let mut c_from_a = carol.sessions_with(&alice);
    c_from_a.decrypt(&mut carol.keys, &m).unwrap();
    let reply = c_from_a.encrypt(b"reply").unwrap();
    a.decrypt(&mut alice.keys, &reply).unwrap();
    let normal = a.encrypt(b"normal now").unwrap();
    assert!(matches!(
        b_from_a.decrypt(&mut bob.keys, &normal),
        Err(SessionError::CannotDecrypt { .. })
    ));
    assert!(matches!(
        b_from_a.decrypt(&mut bob.keys, b"\x01\x05garbage"),
        Err(SessionError::Decode(_))
    ));
    assert!(!b_from_a.has_session(), "failures must not create sessions");
}

#[test]
fn pickle_round_trip_mid_conversation() {
    let mut alice = Device::new("alice");
    let mut bob = Device::new("bob");
    let mut a = alice.sessions_with(&bob);
    let mut b = bob.sessions_with(&alice);
    a.start(&alice.keys, &bob.claim()).unwrap();
    let m1 = a.encrypt(b"one").unwrap();
    let m2 = a.encrypt(b"two").unwrap();
    b.decrypt(&mut bob.keys, &m1).unwrap();
    let mut b = PeerSessions::from_pickle(&b.pickle().unwrap()).unwrap();
    let mut bob_keys =
        tern_crypto::DeviceKeys::from_secret_bytes(&bob.keys.to_secret_bytes().unwrap()).unwrap();
    assert_eq!(&**b.decrypt(&mut bob_keys, &m2).unwrap().plaintext, b"two");
    assert!(matches!(
        b.decrypt(&mut bob_keys, &m1),
        Err(SessionError::Duplicate(_))
    ));
    let r = b.encrypt(b"three").unwrap();
    let mut a = PeerSessions::from_pickle(&a.pickle().unwrap()).unwrap();
    assert_eq!(
        &**a.decrypt(&mut alice.keys, &r).unwrap().plaintext,
        b"three"
    );
}

#[test]
fn oversize_plaintext_refused() {
    let alice = Device::new("alice");
    let mut bob = Device::new("bob");
    let mut a = alice.sessions_with(&bob);
    a.start(&alice.keys, &bob.claim()).unwrap();
    let big = vec![0u8; tern_crypto::consts::MAX_PAIRWISE_PLAINTEXT + 1];
    assert!(matches!(
        a.encrypt(&big),
        Err(SessionError::PlaintextTooLong(_))
    ));
}

// ---- property test --------------------------------------------------------------------------

/// At most this many messages per directed pair, so vodozemac's 40 skipped keys per chain are
/// never exceeded by drops: within that, every message that is delivered must decrypt.
const MAX_PER_PAIR: usize = 35;
/// A message may be overtaken by at most this many later messages of its pair, which keeps it
/// within vodozemac's 5 receiving chains.
const MAX_OVERTAKEN: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    Send { from: usize, to: usize },
    Deliver { pick: usize },
    Drop { pick: usize },
    Duplicate { pick: usize },
    Corrupt { pick: usize, byte: usize, bit: u8 },
    Reload { device: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..3usize).prop_map(|(from, to)| Op::Send { from, to }),
        4 => any::<usize>().prop_map(|pick| Op::Deliver { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Drop { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Duplicate { pick }),
        1 => (any::<usize>(), any::<usize>(), 0..8u8)
            .prop_map(|(pick, byte, bit)| Op::Corrupt { pick, byte, bit }),
        1 => (0..3usize).prop_map(|device| Op::Reload { device }),
    ]
}

struct InFlight {
    from: usize,
    to: usize,
    id: u64,
    bytes: Vec<u8>,
    overtaken: usize,
}

struct World {
    devices: Vec<Device>,
    /// sessions[i][j]: device i's sessions with device j.
    sessions: Vec<Vec<PeerSessions>>,
    in_flight: Vec<InFlight>,
    /// (receiver, sender, bytes) of every message delivered so far.
    delivered: Vec<(usize, usize, Vec<u8>)>,
    decrypted: Vec<HashSet<u64>>,
    dropped: HashSet<u64>,
    sent_per_pair: HashMap<(usize, usize), usize>,
    next_id: u64,
}

impl World {
    fn new() -> Self {
        let devices: Vec<Device> = ["a1", "b1", "c1"].iter().map(|n| Device::new(n)).collect();
        let sessions = (0..3)
            .map(|i| {
                (0..3)
                    .map(|j| devices[i].sessions_with(&devices[j]))
                    .collect()
            })
            .collect();
        World {
            devices,
            sessions,
            in_flight: Vec::new(),
            delivered: Vec::new(),
            decrypted: vec![HashSet::new(); 3],
            dropped: HashSet::new(),
            sent_per_pair: HashMap::new(),
            next_id: 0,
        }
    }

    fn send(&mut self, from: usize, to: usize) {
        if from == to {
            return;
        }
        let count = self.sent_per_pair.entry((from, to)).or_default();
        if *count >= MAX_PER_PAIR {
            return;
        }
        *count += 1;
        if !self.sessions[from][to].has_session() {
            let prekey = self.devices[to].claim();
            self.sessions[from][to]
                .start(&self.devices[from].keys, &prekey)
                .unwrap();
        }
        let id = self.next_id;
        self.next_id += 1;
        let bytes = self.sessions[from][to].encrypt(&id.to_be_bytes()).unwrap();
        self.in_flight.push(InFlight {
            from,
            to,
            id,
            bytes,
            overtaken: 0,
        });
    }

    /// Picks an in-flight message, honouring the overtaking bound within its pair.
    fn pick(&mut self, pick: usize) -> Option<InFlight> {
        if self.in_flight.is_empty() {
            return None;
        }
        let mut idx = pick % self.in_flight.len();
        let (from, to) = (self.in_flight[idx].from, self.in_flight[idx].to);
        // The oldest message of the same pair must go first once it has been overtaken enough.
        if let Some(oldest) = self
            .in_flight
            .iter()
            .position(|m| m.from == from && m.to == to)
            && self.in_flight[oldest].overtaken >= MAX_OVERTAKEN
        {
            idx = oldest;
        }
        let msg = self.in_flight.remove(idx);
        for m in self
            .in_flight
            .iter_mut()
            .filter(|m| m.from == from && m.to == to)
        {
            if m.id < msg.id {
                m.overtaken += 1;
            }
        }
        Some(msg)
    }

    fn state(&self, device: usize, peer: usize) -> (Vec<u8>, Vec<u8>) {
        (
            self.sessions[device][peer].pickle().unwrap().to_vec(),
            self.devices[device]
                .keys
                .to_secret_bytes()
                .unwrap()
                .to_vec(),
        )
    }

    fn deliver(&mut self, msg: InFlight) -> Result<(), TestCaseError> {
        let (from, to) = (msg.from, msg.to);
        let device = &mut self.devices[to].keys;
        let result = self.sessions[to][from].decrypt(device, &msg.bytes);
        match result {
            Ok(d) => {
                let id = u64::from_be_bytes(d.plaintext[..8].try_into().unwrap());
                prop_assert_eq!(id, msg.id);
                prop_assert!(
                    self.decrypted[to].insert(id),
                    "message {} decrypted twice",
                    id
                );
            }
            Err(e) => prop_assert!(false, "fresh message {} failed: {}", msg.id, e),
        }
        self.delivered.push((to, from, msg.bytes));
        Ok(())
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Send { from, to } => self.send(from, to),
            Op::Deliver { pick } => {
                if let Some(msg) = self.pick(pick) {
                    self.deliver(msg)?;
                }
            }
            Op::Drop { pick } => {
                if let Some(msg) = self.pick(pick) {
                    self.dropped.insert(msg.id);
                }
            }
            Op::Duplicate { pick } => {
                if self.delivered.is_empty() {
                    return Ok(());
                }
                let (to, from, bytes) = self.delivered[pick % self.delivered.len()].clone();
                let before = self.state(to, from);
                let device = &mut self.devices[to].keys;
                let result = self.sessions[to][from].decrypt(device, &bytes);
                prop_assert!(
                    matches!(
                        result,
                        Err(SessionError::Duplicate(_)) | Err(SessionError::MessageKeyGone(_))
                    ),
                    "redelivered copy was not refused: {:?}",
                    result.map(|_| ())
                );
                prop_assert!(
                    self.state(to, from) == before,
                    "a refused duplicate changed state"
                );
            }
            Op::Corrupt { pick, byte, bit } => {
                if self.in_flight.is_empty() {
                    return Ok(());
                }
                let msg = &self.in_flight[pick % self.in_flight.len()];
                let (from, to) = (msg.from, msg.to);
                let mut bad = msg.bytes.clone();
                let i = byte % bad.len();
                bad[i] ^= 1 << bit;
                let before = self.state(to, from);
                let device = &mut self.devices[to].keys;
                let result = self.sessions[to][from].decrypt(device, &bad);
                prop_assert!(result.is_err(), "corrupted message decrypted");
                let after = self.state(to, from);
                prop_assert!(
                    after.0 == before.0,
                    "a failed decryption changed session state: {:?} byte {} of {}",
                    result.err(),
                    i,
                    bad.len()
                );
                prop_assert!(
                    after.1 == before.1,
                    "a failed decryption changed device keys: {:?}",
                    result.err()
                );
            }
            Op::Reload { device } => {
                // Persist and restore everything the device holds, as a restart would.
                let keys = self.devices[device].keys.to_secret_bytes().unwrap();
                self.devices[device].keys =
                    tern_crypto::DeviceKeys::from_secret_bytes(&keys).unwrap();
                for peer in 0..3 {
                    let p = self.sessions[device][peer].pickle().unwrap();
                    self.sessions[device][peer] = PeerSessions::from_pickle(&p).unwrap();
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), TestCaseError> {
        while let Some(msg) = self.pick(0) {
            self.deliver(msg)?;
        }
        let total: usize = self.decrypted.iter().map(HashSet::len).sum();
        prop_assert_eq!(total as u64 + self.dropped.len() as u64, self.next_id);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every message that is not dropped decrypts exactly once, whatever the loss, reordering
    /// (bounded), duplication, corruption and restarts; failures change no state.
    #[test]
    fn every_message_decrypts_exactly_once(ops in prop::collection::vec(op(), 1..160)) {
        let mut world = World::new();
        for op in ops {
            world.apply(op)?;
        }
        world.finish()?;
    }
}

/// `skip_ahead` says how far ahead of its chain a message is, survives a pickle, and holding a
/// far-ahead message back until its predecessors arrive loses nothing, where decrypting it
/// first loses the earliest ones for good (vodozemac keeps 40 skipped keys).
#[test]
fn skip_ahead_tells_how_far_a_message_jumps_and_waiting_loses_nothing() {
    use tern_crypto::session::OLM_SKIPPED_KEYS;
    let alice = Device::new("alice");
    let mut bob = Device::new("bob");
    let mut a = alice.sessions_with(&bob);
    let mut b = bob.sessions_with(&alice);
    a.start(&alice.keys, &bob.claim()).unwrap();
    let burst: Vec<Vec<u8>> = (0..120)
        .map(|i| a.encrypt(format!("m{i}").as_bytes()).unwrap())
        .collect();
    // Nothing decrypted yet: the first message starts the chain, the 100th is 99 ahead.
    assert_eq!(b.skip_ahead(&burst[0]).unwrap(), 0);
    assert_eq!(b.skip_ahead(&burst[99]).unwrap(), 99);
    b.decrypt(&mut bob.keys, &burst[0]).unwrap();
    assert_eq!(b.skip_ahead(&burst[1]).unwrap(), 0);
    assert_eq!(b.skip_ahead(&burst[50]).unwrap(), 49);
    // The position survives a pickle.
    let mut b = PeerSessions::from_pickle(&b.pickle().unwrap()).unwrap();
    assert_eq!(b.skip_ahead(&burst[50]).unwrap(), 49);
    // Decrypting a message far ahead loses the earliest keys it passes over ...
    // (a copy of the same state; these messages open no new session, so the account is
    // not touched)
    let mut eager = PeerSessions::from_pickle(&b.pickle().unwrap()).unwrap();
    eager.decrypt(&mut bob.keys, &burst[100]).unwrap();
    let lost = (1..100)
        .filter(|i| {
            matches!(
                eager.decrypt(&mut bob.keys, &burst[*i]),
                Err(SessionError::MessageKeyGone(_))
            )
        })
        .count() as u64;
    assert_eq!(lost, 99 - OLM_SKIPPED_KEYS);
    // ... while taking them in the order skip_ahead asks for loses none, in any arrival order.
    let mut waiting: Vec<usize> = (1..120).rev().collect();
    let mut read = Vec::new();
    while !waiting.is_empty() {
        let ready = waiting
            .iter()
            .position(|i| b.skip_ahead(&burst[*i]).unwrap() == 0)
            .expect("one message is always next");
        let i = waiting.remove(ready);
        let d = b.decrypt(&mut bob.keys, &burst[i]).unwrap();
        read.push(String::from_utf8(d.plaintext.to_vec()).unwrap());
    }
    let expected: Vec<String> = (1..120).map(|i| format!("m{i}")).collect();
    assert_eq!(read, expected);
    // A delayed copy is behind its chain, not ahead.
    assert_eq!(b.skip_ahead(&burst[3]).unwrap(), 0);
}
