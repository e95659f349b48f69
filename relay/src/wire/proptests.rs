//! Property tests: every frame round-trips, and no byte string makes a decoder panic.

use libp2p::{PeerId, identity::Keypair};
use proptest::prelude::*;
use serde_bytes::ByteBuf;

use super::{ErrorCode, Rejection, directory, mailbox, presence};

fn peer() -> impl Strategy<Value = PeerId> {
    any::<[u8; 32]>().prop_map(|mut seed| {
        Keypair::ed25519_from_bytes(&mut seed)
            .map(|k| k.public().to_peer_id())
            .unwrap_or_else(|_| PeerId::random())
    })
}

fn bytes(max: usize) -> impl Strategy<Value = ByteBuf> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(ByteBuf::from)
}

fn envelope() -> impl Strategy<Value = mailbox::Envelope> {
    (
        any::<u64>(),
        peer(),
        any::<u64>(),
        bytes(256),
        any::<bool>(),
    )
        .prop_map(
            |(id, sender, deposited_ms, ciphertext, intro)| mailbox::Envelope {
                id,
                sender,
                deposited_ms,
                ciphertext,
                intro,
            },
        )
}

fn rejection() -> impl Strategy<Value = Rejection> {
    (any::<u16>(), proptest::option::of(any::<u64>())).prop_map(|(c, retry_after_ms)| Rejection {
        code: ErrorCode::from(c),
        retry_after_ms,
    })
}

fn mailbox_request() -> impl Strategy<Value = mailbox::Request> {
    prop_oneof![
        (
            proptest::collection::vec(peer(), 0..8),
            proptest::option::of(any::<u32>()),
            bytes(512),
            proptest::collection::vec(proptest::option::of(any::<[u8; 32]>()), 0..8),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(recipients, ttl_secs, ciphertext, tokens, follows)| {
                mailbox::Request::Deposit {
                    recipients,
                    ttl_secs,
                    ciphertext,
                    tokens: tokens
                        .into_iter()
                        .map(|t| t.map(serde_bytes::ByteArray::new))
                        .collect(),
                    follows,
                }
            }),
        proptest::collection::vec(any::<[u8; 32]>(), 0..8).prop_map(|h| {
            mailbox::Request::SetGrants {
                hashes: h.into_iter().map(serde_bytes::ByteArray::new).collect(),
            }
        }),
        Just(mailbox::Request::Usage),
        (any::<u64>(), any::<u32>())
            .prop_map(|(after, limit)| mailbox::Request::Fetch { after, limit }),
        proptest::collection::vec(any::<u64>(), 0..16)
            .prop_map(|ids| mailbox::Request::Ack { ids }),
        any::<bool>().prop_map(|enabled| mailbox::Request::Listen { enabled }),
        proptest::option::of("[ -~]{0,64}").prop_map(|url| mailbox::Request::RegisterPush { url }),
        proptest::collection::vec(envelope(), 0..4)
            .prop_map(|messages| mailbox::Request::Deliver { messages }),
    ]
}

fn mailbox_response() -> impl Strategy<Value = mailbox::Response> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u32>(),
            proptest::collection::vec((peer(), any::<u16>()), 0..4)
        )
            .prop_map(
                |(message, recipients, refused)| mailbox::Response::Deposited {
                    message,
                    recipients,
                    refused: refused
                        .into_iter()
                        .map(|(peer, c)| mailbox::Refusal {
                            peer,
                            code: ErrorCode::from(c),
                        })
                        .collect(),
                }
            ),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            proptest::collection::vec(peer(), 0..3)
        )
            .prop_map(|(messages, bytes, registered, senders)| {
                mailbox::Response::Usage(mailbox::Usage {
                    total: mailbox::Fill { messages, bytes },
                    senders: senders
                        .into_iter()
                        .map(|p| (p, mailbox::Fill::default()))
                        .collect(),
                    registered,
                    ..mailbox::Usage::default()
                })
            }),
        (proptest::collection::vec(envelope(), 0..4), any::<bool>())
            .prop_map(|(messages, more)| mailbox::Response::Messages { messages, more }),
        any::<u32>().prop_map(|removed| mailbox::Response::Acked { removed }),
        Just(mailbox::Response::Ok),
        rejection().prop_map(mailbox::Response::Error),
    ]
}

fn entry() -> impl Strategy<Value = presence::Entry> {
    (
        peer(),
        prop_oneof![
            Just(presence::State::Online),
            Just(presence::State::Away),
            Just(presence::State::Offline),
            Just(presence::State::Unknown)
        ],
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(peer, state, last_seen_ms)| presence::Entry {
            peer,
            state,
            last_seen_ms,
        })
}

fn presence_request() -> impl Strategy<Value = presence::Request> {
    let peers = || proptest::collection::vec(peer(), 0..8);
    prop_oneof![
        prop_oneof![Just(presence::Status::Online), Just(presence::Status::Away)]
            .prop_map(|status| presence::Request::Heartbeat { status }),
        peers().prop_map(|peers| presence::Request::SetAllowList { peers }),
        peers().prop_map(|peers| presence::Request::Query { peers }),
        peers().prop_map(|peers| presence::Request::Subscribe { peers }),
        proptest::collection::vec(entry(), 0..8)
            .prop_map(|entries| presence::Request::Update { entries }),
    ]
}

fn directory_request() -> impl Strategy<Value = directory::Request> {
    prop_oneof![
        bytes(512).prop_map(|list| directory::Request::PublishDeviceList { list }),
        bytes(32).prop_map(|user| directory::Request::FetchDeviceList { user }),
        bytes(512).prop_map(|bundle| directory::Request::PublishPrekeys { bundle }),
        (bytes(32), peer())
            .prop_map(|(user, device)| directory::Request::ClaimPrekey { user, device }),
        Just(directory::Request::PrekeyCount),
    ]
}

fn directory_response() -> impl Strategy<Value = directory::Response> {
    prop_oneof![
        Just(directory::Response::Ok),
        bytes(512).prop_map(|list| directory::Response::DeviceList { list }),
        (bytes(512), any::<bool>())
            .prop_map(|(claim, fallback)| directory::Response::Prekey { claim, fallback }),
        any::<u32>().prop_map(|one_time_keys| directory::Response::Published { one_time_keys }),
        rejection().prop_map(directory::Response::Error),
    ]
}

proptest! {
    #[test]
    fn mailbox_frames_round_trip(req in mailbox_request(), resp in mailbox_response()) {
        prop_assert_eq!(mailbox::Request::decode(&req.encode().unwrap()).unwrap(), req);
        prop_assert_eq!(mailbox::Response::decode(&resp.encode().unwrap()).unwrap(), resp);
    }

    #[test]
    fn presence_frames_round_trip(req in presence_request(), entries in proptest::collection::vec(entry(), 0..8)) {
        prop_assert_eq!(presence::Request::decode(&req.encode().unwrap()).unwrap(), req);
        let resp = presence::Response::Presence { entries };
        prop_assert_eq!(presence::Response::decode(&resp.encode().unwrap()).unwrap(), resp);
    }

    #[test]
    fn directory_frames_round_trip(req in directory_request(), resp in directory_response()) {
        prop_assert_eq!(directory::Request::decode(&req.encode().unwrap()).unwrap(), req);
        prop_assert_eq!(directory::Response::decode(&resp.encode().unwrap()).unwrap(), resp);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = mailbox::Request::decode(&data);
        let _ = mailbox::Response::decode(&data);
        let _ = presence::Request::decode(&data);
        let _ = presence::Response::decode(&data);
        let _ = directory::Request::decode(&data);
        let _ = directory::Response::decode(&data);
    }

    #[test]
    fn mutated_frames_never_panic(req in mailbox_request(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = req.encode().unwrap();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let _ = mailbox::Request::decode(&bytes);
    }
}
