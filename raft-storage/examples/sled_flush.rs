//! Why the Raft log is not in sled: what `sled::Db::flush` asks of the kernel.
//!
//! ```text
//! cargo build --release -p seam-raft-storage --example sled_flush
//! strace -f -c -e trace=fsync,fdatasync,sync_file_range target/release/examples/sled_flush
//! ```
//!
//! Inserts and flushes 2,000 times. sled 0.34 makes each flush durable with
//! `sync_file_range`, which neither flushes the drive's write cache nor the file's metadata
//! (sled issue #1452): a power cut can lose what `flush` reported as written.

fn main() {
    let dir = tempfile::TempDir::new().expect("tempdir");
    let db = sled::Config::new().path(dir.path()).flush_every_ms(None).open().expect("sled");
    for i in 0u32..2000 {
        db.insert(i.to_be_bytes(), vec![0x5a; 100]).expect("insert");
        db.flush().expect("flush");
    }
    println!("2000 inserts, each followed by flush()");
}
