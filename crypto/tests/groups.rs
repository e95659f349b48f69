//! Sender keys: distribution, binding, replays, late joiners, rotation, forward secrecy, and a
//! property test with random loss, reordering and duplication over several senders and members.

use std::collections::HashSet;

use proptest::prelude::*;
use tern_crypto::consts::{MEGOLM_DISCARD_STEP, MEGOLM_RETAIN_WINDOW};
use tern_crypto::group::{
    GroupError, GroupId, GroupMessage, InboundSenderKey, MemoryReplayLedger, OutboundSenderKey,
    RotationPolicy, RotationReason, SenderKeyDistribution,
};
use tern_crypto::{DeviceId, DeviceKeys, IdentityKey, UserId};

fn device() -> DeviceId {
    DeviceKeys::generate().unwrap().device_id()
}

fn user() -> UserId {
    IdentityKey::generate().unwrap().user_id()
}

/// What a member does with a distribution that arrived over Olm from `from`.
fn receive(out: &OutboundSenderKey, sender_user: UserId, from: &DeviceId) -> InboundSenderKey {
    let bytes = out.distribution(sender_user).to_bytes().unwrap();
    let dist = SenderKeyDistribution::from_bytes(&bytes).unwrap();
    InboundSenderKey::from_distribution(&dist, from).unwrap()
}

fn open(
    inbound: &mut InboundSenderKey,
    bytes: &[u8],
    ledger: &mut MemoryReplayLedger,
) -> Result<Vec<u8>, GroupError> {
    let msg = GroupMessage::from_bytes(bytes)?;
    inbound.decrypt(&msg, ledger).map(|d| d.body.to_vec())
}

#[test]
fn round_trip_and_replay_rejected() {
    let (g, s, u) = (GroupId::random().unwrap(), device(), user());
    let mut out = OutboundSenderKey::new(g, s, 0);
    let mut inbound = receive(&out, u, &s);
    let mut ledger = MemoryReplayLedger::default();
    let m = out.encrypt(b"hello group").unwrap();
    assert_eq!(open(&mut inbound, &m, &mut ledger).unwrap(), b"hello group");
    assert!(matches!(
        open(&mut inbound, &m, &mut ledger),
        Err(GroupError::Replay { index: 0, .. })
    ));
    // A restart with the durable ledger still refuses it.
    let mut inbound = InboundSenderKey::from_pickle(&inbound.pickle().unwrap()).unwrap();
    assert!(matches!(
        open(&mut inbound, &m, &mut ledger),
        Err(GroupError::Replay { .. })
    ));
}

#[test]
fn distribution_must_come_from_the_sender_it_names() {
    let (g, s, u) = (GroupId::random().unwrap(), device(), user());
    let out = OutboundSenderKey::new(g, s, 0);
    let dist = SenderKeyDistribution::from_bytes(&out.distribution(u).to_bytes().unwrap()).unwrap();
    let mallory = device();
    assert!(matches!(
        InboundSenderKey::from_distribution(&dist, &mallory),
        Err(GroupError::BindingMismatch)
    ));
}

#[test]
fn forwarded_key_cannot_impersonate_the_sender() {
    // Mallory, a member, re-distributes Alice's key as her own. Alice's messages relabelled as
    // Mallory's must not be accepted.
    let (g, alice, mallory, u) = (GroupId::random().unwrap(), device(), device(), user());
    let mut out = OutboundSenderKey::new(g, alice, 0);
    let mut forged =
        SenderKeyDistribution::from_bytes(&out.distribution(u).to_bytes().unwrap()).unwrap();
    forged.sender_device = mallory;
    let mut as_mallory = InboundSenderKey::from_distribution(&forged, &mallory).unwrap();
    let m = out.encrypt(b"from alice").unwrap();
    // Relabel the outer sender of Alice's message as Mallory.
    let relabelled = relabel_sender(&m, &mallory);
    let mut ledger = MemoryReplayLedger::default();
    assert!(matches!(
        open(&mut as_mallory, &relabelled, &mut ledger),
        Err(GroupError::BindingMismatch)
    ));
}

/// Rewrites the outer sender field of a group message (what a relaying attacker could do).
fn relabel_sender(bytes: &[u8], to: &DeviceId) -> Vec<u8> {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Wire {
        sender_device: DeviceId,
        session_id: String,
        #[serde(with = "serde_bytes")]
        megolm: Vec<u8>,
    }
    let mut wire: Wire =
        tern_crypto::codec::decode(tern_crypto::Kind::GroupMessage, bytes).unwrap();
    wire.sender_device = *to;
    tern_crypto::codec::encode(tern_crypto::Kind::GroupMessage, &wire).unwrap()
}

#[test]
fn wrong_group_key_refused() {
    let (s, u) = (device(), user());
    let g1 = GroupId::random().unwrap();
    let g2 = GroupId::random().unwrap();
    let mut out1 = OutboundSenderKey::new(g1, s, 0);
    let out2 = OutboundSenderKey::new(g2, s, 0);
    let mut in2 = receive(&out2, u, &s);
    let m = out1.encrypt(b"for group 1").unwrap();
    let mut ledger = MemoryReplayLedger::default();
    assert!(matches!(
        open(&mut in2, &m, &mut ledger),
        Err(GroupError::BindingMismatch)
    ));
}

#[test]
fn late_joiner_cannot_read_earlier_messages() {
    let (g, s, u) = (GroupId::random().unwrap(), device(), user());
    let mut out = OutboundSenderKey::new(g, s, 0);
    let early = out.encrypt(b"before you joined").unwrap();
    let late_member = receive(&out, u, &s);
    let mut late_member = late_member;
    let after = out.encrypt(b"welcome").unwrap();
    let mut ledger = MemoryReplayLedger::default();
    assert!(matches!(
        open(&mut late_member, &early, &mut ledger),
        Err(GroupError::TooOld {
            index: 0,
            first_known: 1
        })
    ));
    assert_eq!(
        open(&mut late_member, &after, &mut ledger).unwrap(),
        b"welcome"
    );
}

#[test]
fn old_ratchet_state_is_discarded() {
    let (g, s, u) = (GroupId::random().unwrap(), device(), user());
    let mut out = OutboundSenderKey::new(g, s, 0);
    let mut inbound = receive(&out, u, &s);
    let first = out.encrypt(b"first").unwrap();
    let mut last = Vec::new();
    for _ in 0..=MEGOLM_RETAIN_WINDOW + MEGOLM_DISCARD_STEP + 5 {
        last = out.encrypt(b"later").unwrap();
    }
    let mut ledger = MemoryReplayLedger::default();
    open(&mut inbound, &last, &mut ledger).unwrap();
    assert!(inbound.first_known_index() > 0);
    assert!(matches!(
        open(&mut inbound, &first, &mut ledger),
        Err(GroupError::TooOld { .. })
    ));
}

#[test]
fn rotation_policy() {
    let (g, s) = (GroupId::random().unwrap(), device());
    let policy = RotationPolicy {
        max_messages: 3,
        max_age_secs: 100,
    };
    let mut out = OutboundSenderKey::new(g, s, 1000);
    assert_eq!(out.rotation_due(&policy, 1000), None);
    assert_eq!(out.rotation_due(&policy, 1100), Some(RotationReason::Age));
    for _ in 0..3 {
        out.encrypt(b"x").unwrap();
    }
    assert_eq!(
        out.rotation_due(&policy, 1000),
        Some(RotationReason::Messages)
    );
    // A rotated key is a different session: members of the old key cannot read it.
    let old_in = receive(&out, user(), &s);
    let mut rotated = OutboundSenderKey::new(g, s, 1001);
    assert_ne!(rotated.session_id(), out.session_id());
    let m = rotated.encrypt(b"after removal").unwrap();
    let mut old_in = old_in;
    let mut ledger = MemoryReplayLedger::default();
    assert!(matches!(
        open(&mut old_in, &m, &mut ledger),
        Err(GroupError::BindingMismatch)
    ));
}

#[test]
fn tampering_is_detected_and_changes_nothing() {
    let (g, s, u) = (GroupId::random().unwrap(), device(), user());
    let mut out = OutboundSenderKey::new(g, s, 0);
    let mut inbound = receive(&out, u, &s);
    let m = out.encrypt(b"integrity").unwrap();
    let mut ledger = MemoryReplayLedger::default();
    for i in 0..m.len() {
        let mut bad = m.clone();
        bad[i] ^= 0x04;
        assert!(
            open(&mut inbound, &bad, &mut ledger).is_err(),
            "flip at byte {i} accepted"
        );
    }
    // After all those failures the genuine message still decrypts (nothing was recorded).
    assert_eq!(open(&mut inbound, &m, &mut ledger).unwrap(), b"integrity");
}

#[test]
fn pickles_round_trip() {
    let (g, s, u) = (GroupId::random().unwrap(), device(), user());
    let mut out = OutboundSenderKey::new(g, s, 0);
    let mut inbound = receive(&out, u, &s);
    out.encrypt(b"advance").unwrap();
    let mut out = OutboundSenderKey::from_pickle(&out.pickle().unwrap()).unwrap();
    let m = out.encrypt(b"after reload").unwrap();
    inbound = InboundSenderKey::from_pickle(&inbound.pickle().unwrap()).unwrap();
    let mut ledger = MemoryReplayLedger::default();
    let msg = GroupMessage::from_bytes(&m).unwrap();
    let d = inbound.decrypt(&msg, &mut ledger).unwrap();
    assert_eq!(d.index, 1);
    assert_eq!(d.group_id, g);
    assert_eq!(d.sender_user, u);
}

// ---- property test --------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Send { sender: usize },
    Deliver { pick: usize, member: usize },
    Replay { pick: usize, member: usize },
    Reload { member: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize).prop_map(|sender| Op::Send { sender }),
        5 => (any::<usize>(), 0..4usize).prop_map(|(pick, member)| Op::Deliver { pick, member }),
        1 => (any::<usize>(), 0..4usize).prop_map(|(pick, member)| Op::Replay { pick, member }),
        1 => (0..4usize).prop_map(|member| Op::Reload { member }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Three senders, four members, each member receiving every message at most once in any
    /// order and possibly many times: each message decrypts exactly once per member, every
    /// repeat is a replay error, and at the end every member holds every message.
    #[test]
    fn each_member_decrypts_each_message_exactly_once(ops in prop::collection::vec(op(), 1..200)) {
        let g = GroupId::random().unwrap();
        let senders: Vec<(DeviceId, UserId)> = (0..3).map(|_| (device(), user())).collect();
        let mut outs: Vec<OutboundSenderKey> =
            senders.iter().map(|(d, _)| OutboundSenderKey::new(g, *d, 0)).collect();
        // members[m][s]: member m's inbound key for sender s; one ledger per member.
        let mut members: Vec<Vec<InboundSenderKey>> = (0..4)
            .map(|_| senders.iter().zip(&outs).map(|((d, u), o)| receive(o, *u, d)).collect())
            .collect();
        let mut ledgers: Vec<MemoryReplayLedger> = (0..4).map(|_| MemoryReplayLedger::default()).collect();
        let mut sent: Vec<(usize, Vec<u8>, Vec<u8>)> = Vec::new();
        let mut got: Vec<HashSet<usize>> = vec![HashSet::new(); 4];

        let deliver = |members: &mut Vec<Vec<InboundSenderKey>>, ledgers: &mut Vec<MemoryReplayLedger>,
                           got: &mut Vec<HashSet<usize>>, sent: &[(usize, Vec<u8>, Vec<u8>)], k: usize, m: usize|
         -> Result<(), TestCaseError> {
            let (s, bytes, body) = &sent[k];
            let r = open(&mut members[m][*s], bytes, &mut ledgers[m]);
            if got[m].contains(&k) {
                prop_assert!(matches!(r, Err(GroupError::Replay { .. })), "repeat not refused");
            } else {
                prop_assert_eq!(r.map_err(|e| TestCaseError::fail(e.to_string()))?, body.clone());
                got[m].insert(k);
            }
            Ok(())
        };

        for op in ops {
            match op {
                Op::Send { sender } => {
                    let body = format!("m{}-{}", sender, sent.len()).into_bytes();
                    let bytes = outs[sender].encrypt(&body).unwrap();
                    sent.push((sender, bytes, body));
                }
                Op::Deliver { pick, member } | Op::Replay { pick, member } => {
                    if !sent.is_empty() {
                        deliver(&mut members, &mut ledgers, &mut got, &sent, pick % sent.len(), member)?;
                    }
                }
                Op::Reload { member } => {
                    for key in members[member].iter_mut() {
                        *key = InboundSenderKey::from_pickle(&key.pickle().unwrap()).unwrap();
                    }
                }
            }
        }
        for m in 0..4 {
            for k in 0..sent.len() {
                deliver(&mut members, &mut ledgers, &mut got, &sent, k, m)?;
            }
            prop_assert_eq!(got[m].len(), sent.len());
        }
    }
}
