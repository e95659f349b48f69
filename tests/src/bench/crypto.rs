//! `crypto` suite: Tern's session, group and media layers against the raw primitives under them.
//!
//! - `crypto.session_roundtrip`: messages/s through [`PeerSessions`] encrypt + decrypt (wire
//!   envelope, duplicate window, failure snapshots included) vs raw vodozemac Olm sessions with
//!   only vodozemac's own wire encoding added (every real use must serialize a message).
//! - `crypto.group_encrypt` / `crypto.group_decrypt`: messages/s through the sender-key layer
//!   (binding, envelope, replay ledger) vs raw Megolm with its own `to_bytes` / `from_bytes`.
//! - `crypto.media_encrypt` / `crypto.media_decrypt`: MB/s of the streaming media cipher vs a plain
//!   ChaCha20-Poly1305 loop over the same chunks with the same copies in and out.

use std::io::Cursor;
use std::time::Duration;

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
use tern_crypto::device_list::DeviceList;
use tern_crypto::group::{
    GroupId, GroupMessage, InboundSenderKey, MemoryReplayLedger, OutboundSenderKey,
    SenderKeyDistribution,
};
use tern_crypto::media::{self, MediaKey};
use tern_crypto::prekey::{ClaimedPrekey, PrekeyBundle};
use tern_crypto::session::PeerSessions;
use tern_crypto::{DeviceKeys, IdentityKey};
use vodozemac::olm::{Account, OlmMessage, Session, SessionConfig};

use super::{Opts, Report, alternate, per_sec, time};

const BODY_LEN: usize = 200;
/// Messages one way before the other side answers once (a ratchet turn), in both layers alike.
const BURST: usize = 10;
// Many short alternating rounds (rather than a few long ones) so the medians are stable on a
// shared machine: each round is a few hundred milliseconds.

pub(crate) fn run(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    session(opts, report)?;
    group(opts, report)?;
    media_cipher(opts, report)?;
    Ok(())
}

fn session(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    let n = opts.size(5_000, 50);
    let rounds = opts.size(21, 1);
    let body = vec![b'x'; BODY_LEN];

    // Raw vodozemac: two accounts, one session each way of the same pair.
    let config = SessionConfig::version_2();
    let alice = Account::new();
    let mut bob = Account::new();
    bob.generate_one_time_keys(1);
    let otk = *bob
        .one_time_keys()
        .values()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no one-time key"))?;
    let mut raw_a = alice.create_outbound_session(config, bob.curve25519_key(), otk)?;
    let first = raw_a.encrypt(&body)?;
    let OlmMessage::PreKey(pre) = &first else {
        anyhow::bail!("first message is not a prekey message");
    };
    let mut raw_b = bob
        .create_inbound_session(config, alice.curve25519_key(), pre)?
        .session;
    let mut raw_round = || -> Duration { time(|| raw_exchange(&mut raw_a, &mut raw_b, &body, n)) };

    // Tern: identities, certificates, a device list, a claimed and verified prekey.
    let ia = IdentityKey::generate()?;
    let ib = IdentityKey::generate()?;
    let mut da = DeviceKeys::generate()?;
    let mut db = DeviceKeys::generate()?;
    let cert_b = db.certify(&ib, "bob", 0)?;
    let list_b = DeviceList::first(&ib, cert_b.clone(), 0);
    let bundle = PrekeyBundle::generate(&mut db, cert_b, 1)?;
    let claim = ClaimedPrekey::from_bytes(&bundle.claim(bundle.one_time_keys[0]).to_bytes()?)?;
    let prekey = claim.verify(&list_b)?;
    let _ = da.certify(&ia, "alice", 0)?;
    let mut ours_a = PeerSessions::new(db.device_id(), db.curve25519());
    let mut ours_b = PeerSessions::new(da.device_id(), da.curve25519());
    ours_a.start(&da, &prekey)?;
    let m = ours_a.encrypt(&body)?;
    ours_b.decrypt(&mut db, &m)?;
    let mut failures = 0usize;
    let mut ours_round = || -> Duration {
        time(|| {
            failures += tern_exchange(&mut ours_a, &mut ours_b, &mut da, &mut db, &body, n);
        })
    };

    let (ours, raw) = alternate(rounds, &mut ours_round, &mut raw_round);
    anyhow::ensure!(
        failures == 0,
        "{failures} messages failed in the Tern layer"
    );
    report.compare(
        "crypto.session_roundtrip",
        per_sec(n, ours),
        "msg/s",
        "raw vodozemac Olm + its encoding",
        per_sec(n, raw),
    );
    Ok(())
}

fn raw_exchange(a: &mut Session, b: &mut Session, body: &[u8], n: usize) {
    for i in 0..n {
        let (from, to) = if i % (BURST + 1) == BURST {
            (&mut *b, &mut *a)
        } else {
            (&mut *a, &mut *b)
        };
        let Ok(m) = from.encrypt(body) else { return };
        let _ = std::hint::black_box(to.decrypt(&m));
    }
}

fn tern_exchange(
    a: &mut PeerSessions,
    b: &mut PeerSessions,
    da: &mut DeviceKeys,
    db: &mut DeviceKeys,
    body: &[u8],
    n: usize,
) -> usize {
    let mut failures = 0;
    for i in 0..n {
        let (from, to, keys) = if i % (BURST + 1) == BURST {
            (&mut *b, &mut *a, &mut *da)
        } else {
            (&mut *a, &mut *b, &mut *db)
        };
        match from.encrypt(body).map(|m| to.decrypt(keys, &m)) {
            Ok(Ok(d)) => {
                std::hint::black_box(d);
            }
            _ => failures += 1,
        }
    }
    failures
}

fn group(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    let n = opts.size(5_000, 50);
    let rounds = opts.size(21, 1);
    let body = vec![b'g'; BODY_LEN];
    let config = vodozemac::megolm::SessionConfig::version_2();
    let sender = DeviceKeys::generate()?.device_id();
    let user = IdentityKey::generate()?.user_id();
    let group_id = GroupId::random()?;

    // Encrypt.
    let mut raw_out = vodozemac::megolm::GroupSession::new(config);
    let mut ours_out = OutboundSenderKey::new(group_id, sender, 0);
    let (ours, raw) = alternate(
        rounds,
        || {
            time(|| {
                for _ in 0..n {
                    let _ = std::hint::black_box(ours_out.encrypt(&body));
                }
            })
        },
        || {
            time(|| {
                for _ in 0..n {
                    std::hint::black_box(raw_out.encrypt(&body).to_bytes());
                }
            })
        },
    );
    report.compare(
        "crypto.group_encrypt",
        per_sec(n, ours),
        "msg/s",
        "raw vodozemac Megolm + encoding",
        per_sec(n, raw),
    );

    // Decrypt: fresh sessions and messages, decrypted in order by a fresh inbound key per round.
    let mut raw_out = vodozemac::megolm::GroupSession::new(config);
    let raw_key = raw_out.session_key();
    let raw_msgs: Vec<Vec<u8>> = (0..n).map(|_| raw_out.encrypt(&body).to_bytes()).collect();
    let mut ours_out = OutboundSenderKey::new(group_id, sender, 0);
    let dist = SenderKeyDistribution::from_bytes(&ours_out.distribution(user).to_bytes()?)?;
    let ours_msgs: Vec<Vec<u8>> = (0..n)
        .map(|_| ours_out.encrypt(&body))
        .collect::<Result<_, _>>()?;
    let mut failures = 0usize;
    let (ours, raw) = alternate(
        rounds,
        || {
            let Ok(mut inbound) = InboundSenderKey::from_distribution(&dist, &sender) else {
                failures += 1;
                return Duration::ZERO;
            };
            let mut ledger = MemoryReplayLedger::default();
            time(|| {
                for m in &ours_msgs {
                    let ok = GroupMessage::from_bytes(m)
                        .and_then(|m| inbound.decrypt(&m, &mut ledger))
                        .is_ok();
                    failures += usize::from(!ok);
                }
            })
        },
        || {
            let mut inbound = vodozemac::megolm::InboundGroupSession::new(&raw_key, config);
            time(|| {
                for m in &raw_msgs {
                    if let Ok(m) = vodozemac::megolm::MegolmMessage::from_bytes(m) {
                        let _ = std::hint::black_box(inbound.decrypt(&m));
                    }
                }
            })
        },
    );
    anyhow::ensure!(
        failures == 0,
        "{failures} group messages failed in the Tern layer"
    );
    report.compare(
        "crypto.group_decrypt",
        per_sec(n, ours),
        "msg/s",
        "raw vodozemac Megolm + encoding",
        per_sec(n, raw),
    );
    Ok(())
}

const CHUNK: usize = tern_crypto::consts::MEDIA_CHUNK_SIZE;

fn media_cipher(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    let size = opts.size(64 << 20, 256 << 10);
    let rounds = opts.size(5, 1);
    let plaintext: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    let key = MediaKey::generate()?;
    let aead = ChaCha20Poly1305::new(key.expose().into());
    let mb = size as f64 / 1e6;

    let mut out = Vec::with_capacity(size + size / 1000 + 64);
    let mut sink = Vec::with_capacity(size + size / 1000 + 64);
    let mut err = None;
    let (ours, raw) = alternate(
        rounds,
        || {
            out.clear();
            time(|| {
                if let Err(e) = media::encrypt_stream(&key, Cursor::new(&plaintext), &mut out) {
                    err = Some(e);
                }
            })
        },
        || {
            sink.clear();
            time(|| plain_loop(&aead, &plaintext, &mut sink, false))
        },
    );
    if let Some(e) = err {
        return Err(e.into());
    }
    report.compare(
        "crypto.media_encrypt",
        mb / ours.as_secs_f64(),
        "MB/s",
        "plain chacha20poly1305 loop",
        mb / raw.as_secs_f64(),
    );

    let ciphertext = out.clone();
    let mut plain_out = Vec::with_capacity(size);
    let mut bad = false;
    let (ours, raw) = alternate(
        rounds,
        || {
            plain_out.clear();
            time(|| {
                bad |=
                    media::decrypt_stream(&key, Cursor::new(&ciphertext), &mut plain_out).is_err();
            })
        },
        || {
            sink.clear();
            time(|| plain_loop(&aead, &plaintext, &mut sink, true))
        },
    );
    anyhow::ensure!(!bad && plain_out == plaintext, "media round trip failed");
    report.compare(
        "crypto.media_decrypt",
        mb / ours.as_secs_f64(),
        "MB/s",
        "plain chacha20poly1305 loop",
        mb / raw.as_secs_f64(),
    );
    Ok(())
}

/// The practical ceiling: copy each chunk into a buffer, run the AEAD over it in place and copy
/// the result out, as any streaming cipher must. (The "decrypt" direction runs the same AEAD
/// work; its tags are not checked since the input is plaintext, which costs the same.)
fn plain_loop(aead: &ChaCha20Poly1305, input: &[u8], sink: &mut Vec<u8>, decrypting: bool) {
    let mut buf = Vec::with_capacity(CHUNK + 16);
    for (i, chunk) in input.chunks(CHUNK).enumerate() {
        buf.clear();
        buf.extend_from_slice(chunk);
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&(i as u64).to_be_bytes());
        let nonce = Nonce::from(nonce);
        if let Ok(tag) = aead.encrypt_inout_detached(&nonce, b"aad", buf.as_mut_slice().into()) {
            sink.extend_from_slice(&buf);
            if !decrypting {
                sink.extend_from_slice(&tag);
            }
        }
    }
    std::hint::black_box(sink);
}
