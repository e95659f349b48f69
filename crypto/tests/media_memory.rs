//! The streaming media API keeps memory flat: 16 MiB through encrypt and decrypt with a peak of
//! live heap far below the file size. A counting allocator measures it in this test binary.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};
use tern_crypto::media::{self, MediaKey};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A reader of `left` pseudo-random bytes that holds none of them.
struct Source {
    left: u64,
    state: u64,
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Content is a function of the position only (one value per 4 KiB block), so any
        // sequence of read sizes yields the same stream; reads stop at block ends, which also
        // exercises short reads.
        let block = self.state / 4096;
        let in_block = (4096 - self.state % 4096) as usize;
        let n = (buf.len() as u64).min(self.left).min(in_block as u64) as usize;
        buf[..n].fill((block.wrapping_mul(2654435761) >> 7) as u8);
        self.state += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

/// A writer that keeps only a running checksum and the byte count.
#[derive(Default)]
struct Sink {
    len: u64,
    hash: Sha256,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.len += buf.len() as u64;
        self.hash.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn streaming_keeps_memory_flat() {
    const SIZE: u64 = 16 << 20;
    let key = MediaKey::generate().unwrap();
    let baseline = LIVE.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    let mut sink = Sink::default();
    let summary = media::encrypt_stream(
        &key,
        Source {
            left: SIZE,
            state: 0,
        },
        &mut sink,
    )
    .unwrap();
    assert_eq!(summary.plaintext_len, SIZE);
    assert_eq!(sink.len, summary.ciphertext_len);
    let peak = PEAK.load(Ordering::Relaxed) - baseline;
    assert!(
        peak < 1 << 20,
        "encrypting 16 MiB peaked at {peak} bytes of heap"
    );

    // Decrypt a 16 MiB ciphertext produced on the fly through a pipe-like adapter: encrypt
    // into chunks of a bounded channel read by the decryptor.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let key2 = key.clone();
    let producer = std::thread::spawn(move || {
        struct Tx(std::sync::mpsc::SyncSender<Vec<u8>>);
        impl Write for Tx {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0
                    .send(buf.to_vec())
                    .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        media::encrypt_stream(
            &key2,
            Source {
                left: SIZE,
                state: 0,
            },
            Tx(tx),
        )
        .unwrap();
    });
    struct Rx {
        rx: std::sync::mpsc::Receiver<Vec<u8>>,
        buf: Vec<u8>,
        pos: usize,
    }
    impl Read for Rx {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.pos == self.buf.len() {
                match self.rx.recv() {
                    Ok(b) => {
                        self.buf = b;
                        self.pos = 0;
                    }
                    Err(_) => return Ok(0),
                }
            }
            let n = out.len().min(self.buf.len() - self.pos);
            out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }
    let mut plain = Sink::default();
    let mut expected = Sink::default();
    io::copy(
        &mut Source {
            left: SIZE,
            state: 0,
        },
        &mut expected,
    )
    .unwrap();
    let n = media::decrypt_stream(
        &key,
        Rx {
            rx,
            buf: Vec::new(),
            pos: 0,
        },
        &mut plain,
    )
    .unwrap();
    producer.join().unwrap();
    assert_eq!(n, SIZE);
    assert_eq!(plain.hash.finalize(), expected.hash.finalize());
    let peak = PEAK.load(Ordering::Relaxed) - baseline;
    assert!(
        peak < 2 << 20,
        "streaming 16 MiB peaked at {peak} bytes of heap"
    );
}
