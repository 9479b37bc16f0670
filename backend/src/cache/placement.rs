//! Which memcached server holds a key: rendezvous (highest random weight) hashing.
//!
//! Each server scores each key, and the highest score wins. The score is a fixed function of the
//! server's address and the key (64-bit FNV-1a over both, then MurmurHash3's finaliser), never
//! Rust's `DefaultHasher`, whose output may change between releases: nodes built by different
//! toolchains and given the servers in any order place every key on the same server. Removing
//! a server moves only its own keys (each to the server with its next-highest score); adding one
//! takes about 1/n of the keys of the others and moves nothing else.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The servers of a pool, each with its address hashed once.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The hash state after a server's address and a NUL separator, with the address for ties.
    seeds: Vec<(u64, String)>,
}

impl Placement {
    /// `addresses` as configured; they must be spelt the same on every node (`host:port`), in
    /// any order. Case and surrounding spaces are ignored.
    pub fn new<'a>(addresses: impl IntoIterator<Item = &'a str>) -> Placement {
        let seeds = addresses
            .into_iter()
            .map(|address| {
                let address = canonical(address);
                let seed = fnv(FNV_OFFSET, address.as_bytes());
                (fnv(seed, &[0]), address)
            })
            .collect();
        Placement { seeds }
    }

    /// The position (in the order given to [`Placement::new`]) of the server that holds `key`,
    /// or `None` for an empty pool.
    pub fn server_of(&self, key: &str) -> Option<usize> {
        self.seeds
            .iter()
            .enumerate()
            .max_by(|(_, (a, a_address)), (_, (b, b_address))| {
                score(*a, key)
                    .cmp(&score(*b, key))
                    // Equal scores (never seen, but possible): the smaller address wins.
                    .then_with(|| b_address.cmp(a_address))
            })
            .map(|(index, _)| index)
    }
}

/// The address as every node compares it.
pub fn canonical(address: &str) -> String {
    address.trim().to_ascii_lowercase()
}

/// A server's score for a key: FNV-1a continued from the server's seed over the key's bytes,
/// then mixed so that every input bit moves every output bit.
fn score(seed: u64, key: &str) -> u64 {
    fmix64(fnv(seed, key.as_bytes()))
}

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// MurmurHash3's 64-bit finaliser.
fn fmix64(mut hash: u64) -> u64 {
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVERS: [&str; 3] = ["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"];

    fn keys() -> impl Iterator<Item = String> {
        (0..30_000).map(|n| format!("chat:profile:{n}"))
    }

    fn holder(placement: &Placement, addresses: &[&str], key: &str) -> String {
        match placement.server_of(key) {
            Some(index) => addresses[index].to_owned(),
            None => String::new(),
        }
    }

    /// The function itself is part of the deployment's contract: nodes of different versions
    /// share one pool. These scores were worked out apart from this code (FNV-1a 64 over
    /// "127.0.0.1:11211\0chat:profile:1", then MurmurHash3's fmix64).
    #[test]
    fn scores_are_a_fixed_function_of_address_and_key() {
        let seed = fnv(fnv(FNV_OFFSET, b"127.0.0.1:11211"), &[0]);
        assert_eq!(score(seed, "chat:profile:1"), 0xf25c_df4d_0e5b_3261);
        let seed = fnv(fnv(FNV_OFFSET, b"127.0.0.1:11212"), &[0]);
        assert_eq!(score(seed, "chat:profile:1"), 0x3117_9713_65eb_ad22);
    }

    #[test]
    fn every_order_of_the_servers_places_every_key_alike() {
        let orders: [[&str; 3]; 3] = [
            SERVERS,
            [SERVERS[2], SERVERS[0], SERVERS[1]],
            [SERVERS[1], SERVERS[2], SERVERS[0]],
        ];
        let placements: Vec<Placement> = orders.iter().map(|o| Placement::new(*o)).collect();
        for key in keys() {
            let first = holder(&placements[0], &orders[0], &key);
            for (placement, order) in placements.iter().zip(&orders).skip(1) {
                assert_eq!(holder(placement, order, &key), first, "{key}");
            }
        }
        // Spelling differences that are not differences.
        let loose = Placement::new([" 10.0.0.1:11211", "10.0.0.2:11211 ", "10.0.0.3:11211"]);
        for key in keys().take(1_000) {
            assert_eq!(
                holder(&loose, &SERVERS, &key),
                holder(&placements[0], &orders[0], &key)
            );
        }
    }

    #[test]
    fn keys_spread_evenly() {
        let placement = Placement::new(SERVERS);
        let mut counts = [0_usize; 3];
        for key in keys() {
            if let Some(index) = placement.server_of(&key) {
                counts[index] += 1;
            }
        }
        for count in counts {
            // A third is 10,000; a fair coin strays by about 80.
            assert!((9_500..10_500).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn removing_a_server_moves_only_its_keys_and_adding_one_moves_only_to_it() {
        let three = Placement::new(SERVERS);
        let two = Placement::new(SERVERS[..2].iter().copied());
        let mut moved = 0;
        for key in keys() {
            let before = holder(&three, &SERVERS, &key);
            let after = holder(&two, &SERVERS[..2], &key);
            if before != SERVERS[2] {
                assert_eq!(after, before, "{key} moved although its server stayed");
            } else {
                moved += 1;
            }
        }
        assert!((9_500..10_500).contains(&moved), "{moved}");
        // The other way round: going from two servers to three, a key either stays or goes to
        // the new server.
        for key in keys() {
            let after = holder(&three, &SERVERS, &key);
            let before = holder(&two, &SERVERS[..2], &key);
            assert!(after == before || after == SERVERS[2], "{key}");
        }
    }

    #[test]
    fn an_empty_pool_places_nothing() {
        assert_eq!(Placement::new([]).server_of("chat:room:1"), None);
        assert_eq!(Placement::new(["a:1"]).server_of("chat:room:1"), Some(0));
    }
}
