//! A writer process commits records as fast as it can and prints each key once `put`
//! has returned. We SIGKILL it mid-stream, reopen the store and check that every key it
//! reported is there and intact, several times over.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meta_store::{MetaStore, Record};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Item {
    seq: u64,
    // A payload large enough that a commit spans several pages.
    payload: String,
}

impl Record for Item {
    const TABLE: &'static str = "items";
    const VERSION: u32 = 1;
}

fn payload(seq: u64) -> String {
    format!("{seq:08}-").repeat(512)
}

const WRITER_ENV: &str = "BERTH_META_STORE_WRITER";

/// Runs only inside the child process started by `kill_9_during_writes_keeps_committed_records`.
#[test]
fn writer_process() {
    let Ok(path) = std::env::var(WRITER_ENV) else {
        return;
    };
    let store = MetaStore::open(path.as_ref()).unwrap();
    let start = store.list::<Item>().unwrap().len() as u64;
    for seq in start.. {
        store
            .put(
                &format!("{seq:012}"),
                &Item {
                    seq,
                    payload: payload(seq),
                },
            )
            .unwrap();
        // Rewrite an older record too, so the kill can land in an update as well.
        if seq > 0 {
            let old = seq / 2;
            store
                .put(
                    &format!("{old:012}"),
                    &Item {
                        seq: old,
                        payload: payload(old),
                    },
                )
                .unwrap();
        }
        println!("{seq}");
    }
}

#[test]
fn kill_9_during_writes_keeps_committed_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let me = std::env::current_exe().unwrap();
    let mut committed: Option<u64> = None;
    for round in 0..5u64 {
        let mut child = Command::new(&me)
            .args([
                "--exact",
                "writer_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WRITER_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Let it commit a varying number of records, then kill it without warning.
        let want = 20 + round * 37;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        while seen < want && Instant::now() < deadline {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Ok(seq) = l.trim().parse::<u64>() {
                        committed = Some(seq);
                        seen += 1;
                    }
                }
                _ => break,
            }
        }
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let last = committed.expect("the writer committed nothing");

        let store = MetaStore::open(&path).expect("store must open after kill -9");
        for seq in 0..=last {
            let item = store
                .get::<Item>(&format!("{seq:012}"))
                .unwrap_or_else(|e| panic!("record {seq} unreadable after kill -9: {e}"))
                .unwrap_or_else(|| panic!("committed record {seq} lost after kill -9"));
            assert_eq!(
                item,
                Item {
                    seq,
                    payload: payload(seq)
                }
            );
        }
        for (key, rec) in store.list::<Item>().unwrap() {
            rec.unwrap_or_else(|e| panic!("record {key} corrupt: {e}"));
        }
    }
}
