//! `store` suite: tern-store's encrypted database against the same store code on a plain
//! (unencrypted) SQLite file, filled with the same messages and asked the same queries in the
//! same run, alternating between the two so drift in machine load hits both alike.
//!
//! - `store.insert`: messages/s, written in transactions of [`BATCH`] messages as the node
//!   writes a burst (message + session state + unread count per message, `synchronous=FULL`).
//! - `store.latest50_p50` / `_p99`: ms to load the newest 50 messages of a conversation.
//! - `store.awaiting_p50`: µs to ask which own texts wait for a session (every send asks it
//!   first); an index answers it, so it must not grow with the history.
//! - `store.search_p50` / `_p95`: ms for a full-text search across everything (first page of
//!   20 hits with snippets), over word, substring and two-term queries.
//! - `store.bytes_per_message`: file size / messages (FTS index and sessions included).
//!
//! Size: 1,000,000 messages in 1,000 conversations; `--quick` uses 2,000 in 20. The
//! `TERN_BENCH_STORE_MESSAGES` environment variable sets another count (conversations scale
//! as messages / 1,000, at least 10) for a run between the two.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use tern_store::{
    Body, ConversationId, ConversationKind, CryptoUpdate, Message, MessageId, Page, Status,
    StorageKey, Store, Unlock, WriteError,
};

use super::{Opts, Report, ms, per_sec, quantile};

/// Messages per write transaction.
const BATCH: usize = 100;
/// Full-size fill.
const FULL_MESSAGES: usize = 1_000_000;
/// Conversations in the full-size fill.
const FULL_CONVERSATIONS: usize = 1_000;
/// Environment variable that overrides the number of messages.
const SIZE_VAR: &str = "TERN_BENCH_STORE_MESSAGES";
/// Every tenth conversation is a group.
const GROUP_EVERY: usize = 10;
/// Size of a stored pairwise session pickle (vodozemac Olm pickles run 1–2 KiB).
const PICKLE_LEN: usize = 1_400;

/// Words the generated messages are made of: common chat English with some German, French,
/// Japanese and emoji mixed in so the trigram index sees non-ASCII text too.
const WORDS: &[&str] = &[
    "the",
    "be",
    "to",
    "of",
    "and",
    "a",
    "in",
    "that",
    "have",
    "I",
    "it",
    "for",
    "not",
    "on",
    "with",
    "he",
    "as",
    "you",
    "do",
    "at",
    "this",
    "but",
    "his",
    "by",
    "from",
    "they",
    "we",
    "say",
    "her",
    "she",
    "or",
    "an",
    "will",
    "my",
    "one",
    "all",
    "would",
    "there",
    "their",
    "what",
    "so",
    "up",
    "out",
    "if",
    "about",
    "who",
    "get",
    "which",
    "go",
    "me",
    "when",
    "make",
    "can",
    "like",
    "time",
    "no",
    "just",
    "him",
    "know",
    "take",
    "people",
    "into",
    "year",
    "your",
    "good",
    "some",
    "could",
    "them",
    "see",
    "other",
    "than",
    "then",
    "now",
    "look",
    "only",
    "come",
    "its",
    "over",
    "think",
    "also",
    "back",
    "after",
    "use",
    "two",
    "how",
    "our",
    "work",
    "first",
    "well",
    "way",
    "even",
    "new",
    "want",
    "because",
    "any",
    "these",
    "give",
    "day",
    "most",
    "us",
    "meeting",
    "tomorrow",
    "tonight",
    "dinner",
    "lunch",
    "coffee",
    "deploy",
    "release",
    "build",
    "test",
    "bug",
    "fixed",
    "review",
    "please",
    "thanks",
    "sorry",
    "okay",
    "sure",
    "maybe",
    "later",
    "soon",
    "weekend",
    "holiday",
    "flight",
    "train",
    "station",
    "airport",
    "hotel",
    "booking",
    "ticket",
    "concert",
    "football",
    "match",
    "score",
    "birthday",
    "party",
    "present",
    "photo",
    "video",
    "link",
    "document",
    "spreadsheet",
    "invoice",
    "budget",
    "project",
    "deadline",
    "schedule",
    "calendar",
    "morning",
    "evening",
    "afternoon",
    "yesterday",
    "today",
    "kitchen",
    "garden",
    "weather",
    "rain",
    "sunny",
    "snow",
    "cold",
    "warm",
    "running",
    "cycling",
    "swimming",
    "doctor",
    "dentist",
    "appointment",
    "pharmacy",
    "grocery",
    "shopping",
    "market",
    "bakery",
    "restaurant",
    "pizza",
    "sushi",
    "noodles",
    "salad",
    "chocolate",
    "cake",
    "wine",
    "beer",
    "tea",
    "water",
    "café",
    "Grüße",
    "Straße",
    "müde",
    "schön",
    "bientôt",
    "déjà",
    "東京",
    "ありがとう",
    "明日",
    "🙂",
    "🎉",
    "👍",
    "Tern",
    "relay",
    "device",
    "laptop",
    "phone",
    "battery",
    "charger",
    "keyboard",
    "monitor",
    "printer",
    "password",
    "account",
    "message",
    "group",
    "family",
    "friends",
    "neighbours",
    "colleagues",
    "manager",
    "Alice",
    "Bob",
    "Carol",
    "Dave",
    "Erin",
    "Frank",
    "Grace",
    "Heidi",
    "Ivan",
    "Judy",
    "Mallory",
    "Oscar",
];

/// Queries for the search figure: words (common and rare), substrings and prefixes, two terms.
const QUERIES: &[&str] = &[
    "meeting",
    "tomorrow",
    "deploy",
    "pizza",
    "birthday",
    "invoice",
    "appointment",
    "weekend",
    "chocolate",
    "Grüße",
    "東京",
    "football",
    "spreadsheet",
    "neighbours",
    "airport",
    "eting",
    "omorr",
    "birth",
    "invo",
    "ppoint",
    "kend",
    "choc",
    "foot",
    "spread",
    "neighb",
    "meeting tomorrow",
    "pizza tonight",
    "deploy release",
    "coffee morning",
    "flight hotel",
    "Mallory password",
    "dentist appointment",
    "cafe",
    "strasse",
];

/// A small deterministic generator (xorshift64*), so both files get byte-identical data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Text of a realistic length: mostly short lines, some paragraphs.
fn text(rng: &mut Rng) -> String {
    let words = match rng.below(100) {
        0..70 => 2 + rng.below(9),
        70..95 => 10 + rng.below(21),
        _ => 30 + rng.below(51),
    };
    let mut s = String::new();
    for i in 0..words {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.below(WORDS.len())]);
    }
    s
}

/// A conversation index skewed towards a few busy ones, as chat use is.
fn skewed_conversation(rng: &mut Rng, conversations: usize) -> usize {
    let u = rng.unit();
    ((u * u) * conversations as f64) as usize % conversations
}

fn conversation_id(c: usize) -> ConversationId {
    ConversationId(format!("conv-{c:05}-{}", "x".repeat(40)))
}

/// The generated messages, one batch at a time.
struct Generator {
    rng: Rng,
    conversations: usize,
    lamport: Vec<u64>,
    next: u64,
}

impl Generator {
    fn new(conversations: usize) -> Self {
        Generator {
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            conversations,
            lamport: vec![0; conversations],
            next: 0,
        }
    }

    fn message(&mut self) -> Message {
        let c = skewed_conversation(&mut self.rng, self.conversations);
        self.lamport[c] += 1;
        self.next += 1;
        let own = self.rng.below(10) < 3;
        let group = c.is_multiple_of(GROUP_EVERY);
        let sender_user = if own {
            "me".to_owned()
        } else if group {
            format!("user-{c}-{}", self.rng.below(12))
        } else {
            format!("user-{c}")
        };
        let sender_device = device_of(&sender_user);
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.rng.next().to_le_bytes());
        id[8..].copy_from_slice(&self.next.to_le_bytes());
        let now = 1_700_000_000_000 + self.next as i64 * 1_000;
        Message {
            id: MessageId(id),
            conversation: conversation_id(c),
            sender_user,
            sender_device,
            lamport: self.lamport[c],
            seq: self.next,
            sent_at_ms: now - 300,
            received_at_ms: now,
            own,
            status: if own { Status::Sent } else { Status::Received },
            body: Body::Text(text(&mut self.rng)),
            edited_at_ms: None,
        }
    }
}

/// The device id stored for `user`'s messages: user ids and PeerIds are long, so the stored
/// strings are realistic in size.
fn device_of(user: &str) -> String {
    format!("12D3KooW{user:0>44}")
}

/// One database under test and the time spent writing it.
struct Subject {
    name: &'static str,
    path: PathBuf,
    store: Store,
    insert_time: Duration,
}

impl Subject {
    fn open(name: &'static str, path: PathBuf, key: Option<&StorageKey>) -> anyhow::Result<Self> {
        let store = open_store(&path, key)?;
        Ok(Subject {
            name,
            path,
            store,
            insert_time: Duration::ZERO,
        })
    }

    fn write_batch(&mut self, batch: &[Message], pickle: &[u8]) -> anyhow::Result<()> {
        let start = Instant::now();
        self.store
            .transaction(|tx| {
                for m in batch {
                    let session = [CryptoUpdate::Session {
                        peer_device: &m.sender_device,
                        session_id: "s",
                        pickle,
                    }];
                    tx.record_incoming(m, if m.own { &[] } else { &session })?;
                }
                Ok::<_, WriteError>(())
            })
            .with_context(|| format!("writing a batch to the {} file", self.name))?;
        self.insert_time += start.elapsed();
        Ok(())
    }

    /// Closes (checkpointing the WAL into the file) and reopens; returns the file size too.
    fn reopen(self, key: Option<&StorageKey>) -> anyhow::Result<(Self, u64)> {
        let Subject {
            name,
            path,
            store,
            insert_time,
        } = self;
        drop(store);
        let size = file_size(&path) + file_size(&path.with_extension("db-wal"));
        let store = open_store(&path, key)?;
        Ok((
            Subject {
                name,
                path,
                store,
                insert_time,
            },
            size,
        ))
    }
}

fn open_store(path: &Path, key: Option<&StorageKey>) -> anyhow::Result<Store> {
    let unlock = match key {
        Some(k) => Unlock::Key(k),
        None => Unlock::InsecurePlaintext,
    };
    Store::open(path, unlock).with_context(|| format!("opening {}", path.display()))
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Removes the scratch directory however the suite ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the suite.
pub fn run(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    let messages = match std::env::var(SIZE_VAR) {
        Ok(v) => v
            .parse::<usize>()
            .with_context(|| format!("{SIZE_VAR}={v} is not a count"))?,
        Err(_) => opts.size(FULL_MESSAGES, 2_000),
    };
    let conversations = if std::env::var(SIZE_VAR).is_ok() {
        (messages / (FULL_MESSAGES / FULL_CONVERSATIONS)).max(10)
    } else {
        opts.size(FULL_CONVERSATIONS, 20)
    };
    let latest_samples = opts.size(2_000, 50);
    let search_samples = opts.size(400, 20);

    let dir = std::env::temp_dir().join(format!("tern-bench-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _scratch = Scratch(dir.clone());
    let key = StorageKey::generate()?;
    let mut enc = Subject::open("encrypted", dir.join("encrypted.db"), Some(&key))?;
    let mut plain = Subject::open("plain", dir.join("plain.db"), None)?;

    // Conversations first, as the node creates them when a contact or group appears.
    for subject in [&mut enc, &mut plain] {
        subject.store.transaction(|tx| {
            for c in 0..conversations {
                let kind = if c.is_multiple_of(GROUP_EVERY) {
                    ConversationKind::Group
                } else {
                    ConversationKind::Direct
                };
                tx.ensure_conversation(&conversation_id(c), kind, Some(&format!("chat {c}")), 0)?;
            }
            Ok::<_, WriteError>(())
        })?;
    }

    // Fill, alternating batches between the two files.
    let pickle = vec![0x5a; PICKLE_LEN];
    let mut generator = Generator::new(conversations);
    let mut written = 0;
    let progress_every = (messages / 10).max(1);
    while written < messages {
        let n = BATCH.min(messages - written);
        let batch: Vec<Message> = (0..n).map(|_| generator.message()).collect();
        enc.write_batch(&batch, &pickle)?;
        plain.write_batch(&batch, &pickle)?;
        written += n;
        if written % progress_every < n {
            eprintln!("  store: {written}/{messages} messages written");
        }
    }
    report.value("store.messages", messages as f64, "msgs");
    report.compare(
        "store.insert",
        per_sec(messages, enc.insert_time),
        "msg/s",
        "plain SQLite file",
        per_sec(messages, plain.insert_time),
    );

    let (enc, enc_size) = enc.reopen(Some(&key))?;
    let (plain, plain_size) = plain.reopen(None)?;
    report.compare(
        "store.bytes_per_message",
        enc_size as f64 / messages as f64,
        "bytes",
        "plain SQLite file",
        plain_size as f64 / messages as f64,
    );

    // Latest 50 of a conversation, chosen as a user would (busy ones more often).
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let (mut enc_t, mut plain_t) = (Vec::new(), Vec::new());
    for _ in 0..latest_samples {
        let c = conversation_id(skewed_conversation(&mut rng, conversations));
        for (subject, times) in [(&enc, &mut enc_t), (&plain, &mut plain_t)] {
            let start = Instant::now();
            let page = subject.store.history(&c, Page::Latest, Some(50))?;
            times.push(start.elapsed());
            std::hint::black_box(page);
        }
    }
    for (label, q) in [("p50", 0.50), ("p99", 0.99)] {
        report.compare(
            &format!("store.latest50_{label}"),
            ms(quantile(&mut enc_t, q)),
            "ms",
            "plain SQLite file",
            ms(quantile(&mut plain_t, q)),
        );
    }

    // What a node reads first after start: the conversations where this device's texts
    // wait for a session (none here, all own messages were sent). An index answers it,
    // whatever the history's size.
    let me = device_of("me");
    let (mut enc_t, mut plain_t) = (Vec::new(), Vec::new());
    for _ in 0..latest_samples {
        for (subject, times) in [(&enc, &mut enc_t), (&plain, &mut plain_t)] {
            let start = Instant::now();
            let waiting = subject.store.awaiting_conversations(&me)?;
            times.push(start.elapsed());
            anyhow::ensure!(waiting.is_empty(), "no own message waits in this store");
        }
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    report.compare(
        "store.awaiting_p50",
        us(quantile(&mut enc_t, 0.5)),
        "us",
        "plain SQLite file",
        us(quantile(&mut plain_t, 0.5)),
    );

    // Full-text search across everything.
    let (mut enc_t, mut plain_t) = (Vec::new(), Vec::new());
    let mut hits = 0usize;
    for i in 0..search_samples {
        let q = QUERIES[i % QUERIES.len()];
        for (subject, times) in [(&enc, &mut enc_t), (&plain, &mut plain_t)] {
            let start = Instant::now();
            let found = subject.store.search(q, None, Some(20))?;
            times.push(start.elapsed());
            hits += found.hits.len();
        }
    }
    anyhow::ensure!(
        hits > 0,
        "the search queries found nothing: the generated data is wrong"
    );
    for (label, q) in [("p50", 0.50), ("p95", 0.95)] {
        report.compare(
            &format!("store.search_{label}"),
            ms(quantile(&mut enc_t, q)),
            "ms",
            "plain SQLite file",
            ms(quantile(&mut plain_t, q)),
        );
    }
    Ok(())
}
