//! Test support (compiled for tests only): the fuzz corpora kept in
//! `tests/corpus/` (real messages from outside: requests of the clients,
//! answers of the engine and the Daytona API) and the mutations proptest
//! makes of them: flipped, inserted, deleted and spliced bytes, cuts, and
//! now and then arbitrary bytes. Starting from real messages reaches deep
//! into the parsers, where arbitrary bytes stop at the first byte.
#![cfg(test)]

use std::path::Path;

use proptest::prelude::*;

/// The kept messages of `tests/corpus/<part>`, in name order.
pub(crate) fn seeds(part: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(part);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("the fuzz corpus {}: {error}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    paths.sort();
    let seeds: Vec<Vec<u8>> = paths.iter().map(|path| std::fs::read(path).expect("a corpus file")).collect();
    assert!(seeds.len() >= 5, "the corpus {} has {} messages", dir.display(), seeds.len());
    seeds
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        byte: u8,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Delete {
        at: usize,
        length: usize,
    },
    CutAt {
        at: usize,
    },
    /// The tail of another message from `at` on: two messages glued, or a
    /// second request on a kept-alive connection.
    Splice {
        at: usize,
        other: usize,
    },
}

fn mutation(seed_count: usize) -> impl Strategy<Value = Mutation> {
    // Bytes that matter to the parsers more often than chance would pick them.
    let interesting = prop_oneof![
        Just(b"\r\n".to_vec()),
        Just(b"\r\n\r\n".to_vec()),
        Just(b":".to_vec()),
        Just(b"0\r\n\r\n".to_vec()),
        Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
        Just(b"Content-Length: 18446744073709551616\r\n".to_vec()),
        Just(b"ffffffffffffffffff\r\n".to_vec()),
        Just(b"{\"Labels\":null}".to_vec()),
        Just(b"null".to_vec()),
        Just(b"1e309".to_vec()),
        Just(b"\"2024-02-30T25:61:61.999999999999Z\"".to_vec()),
        Just(b"\xff\xfe".to_vec()),
        proptest::collection::vec(any::<u8>(), 1..16),
    ];
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Flip { at, byte }),
        (any::<usize>(), interesting).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..64).prop_map(|(at, length)| Mutation::Delete { at, length }),
        any::<usize>().prop_map(|at| Mutation::CutAt { at }),
        (any::<usize>(), 0..seed_count).prop_map(|(at, other)| Mutation::Splice { at, other }),
    ]
}

fn apply(seeds: &[Vec<u8>], seed: usize, mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = seeds[seed].clone();
    // A place in `0..=length`.
    let place = |at: usize, length: usize| at % (length + 1);
    for mutation in mutations {
        match mutation {
            Mutation::Flip { at, byte } if !bytes.is_empty() => {
                let index = at % bytes.len();
                bytes[index] ^= byte;
            }
            Mutation::Flip { .. } => {}
            Mutation::Insert { at, bytes: inserted } => {
                let index = place(*at, bytes.len());
                bytes.splice(index..index, inserted.iter().copied());
            }
            Mutation::Delete { at, length } => {
                let start = place(*at, bytes.len());
                let end = (start + length).min(bytes.len());
                bytes.drain(start..end);
            }
            Mutation::CutAt { at } => bytes.truncate(place(*at, bytes.len())),
            Mutation::Splice { at, other } => {
                let other = &seeds[*other];
                bytes.extend_from_slice(&other[place(*at, other.len())..]);
            }
        }
    }
    bytes
}

/// Messages of `tests/corpus/<part>`: mostly mutated, sometimes arbitrary bytes.
pub(crate) fn mutated(part: &str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds(part);
    let count = seeds.len();
    let mutated = (0..count, proptest::collection::vec(mutation(count), 0..6))
        .prop_map(move |(seed, mutations)| apply(&seeds, seed, &mutations));
    prop_oneof![9 => mutated, 1 => proptest::collection::vec(any::<u8>(), 0..512)]
}
