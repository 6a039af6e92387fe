//! Entity keys → dense slots, for joins over millions of rows.
//!
//! A join looks up one key per feature row, at random: with a map of boxed strings each lookup
//! misses the cache two or three times (control bytes, bucket, the string). Here the map holds
//! only each key's 64-bit hash (no pointer to follow) and the keys sit in one contiguous buffer,
//! compared on a hit, so a lookup is exact. Two distinct keys with the same hash switch the index
//! to an exact map of the strings.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

/// The hash of a key's bytes.
fn hash(key: &str) -> u64 {
    foldhash::quality::FixedState::with_seed(0x6d6c_6f70_735f_6b65).hash_one(key)
}

/// A hasher for keys that are already hashes.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Keys and their slots (0, 1, … in order of insertion).
#[derive(Default)]
pub struct KeyIndex {
    by_hash: HashMap<u64, u32, BuildHasherDefault<Prehashed>>,
    exact: Option<HashMap<Box<str>, u32>>,
    ends: Vec<u32>,
    bytes: String,
}

impl KeyIndex {
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The key of `slot`.
    pub fn key(&self, slot: u32) -> &str {
        let end = self.ends[slot as usize] as usize;
        let start = if slot == 0 {
            0
        } else {
            self.ends[slot as usize - 1] as usize
        };
        &self.bytes[start..end]
    }

    /// The slot of `key`, if it is in the index.
    pub fn get(&self, key: &str) -> Option<u32> {
        if let Some(exact) = &self.exact {
            return exact.get(key).copied();
        }
        self.by_hash
            .get(&hash(key))
            .copied()
            .filter(|&s| self.key(s) == key)
    }

    /// The slot of `key`, adding it if new.
    pub fn insert(&mut self, key: &str) -> u32 {
        if self.exact.is_none() {
            let h = hash(key);
            match self.by_hash.get(&h) {
                Some(&s) if self.key(s) == key => return s,
                Some(_) => self.go_exact(),
                None => {
                    let s = self.push(key);
                    self.by_hash.insert(h, s);
                    return s;
                }
            }
        }
        if let Some(&s) = self.exact.as_ref().and_then(|m| m.get(key)) {
            return s;
        }
        let s = self.push(key);
        self.exact
            .as_mut()
            .expect("exact mode")
            .insert(key.into(), s);
        s
    }

    fn push(&mut self, key: &str) -> u32 {
        self.bytes.push_str(key);
        self.ends
            .push(u32::try_from(self.bytes.len()).expect("under 4 GiB of keys"));
        (self.ends.len() - 1) as u32
    }

    /// A hash collision between two distinct keys: from now on, compare strings.
    fn go_exact(&mut self) {
        let exact = (0..self.len() as u32)
            .map(|s| (Box::from(self.key(s)), s))
            .collect();
        self.exact = Some(exact);
        self.by_hash = HashMap::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_dense_and_lookups_exact() {
        let mut k = KeyIndex::default();
        assert_eq!(k.insert("a"), 0);
        assert_eq!(k.insert("bb"), 1);
        assert_eq!(k.insert("a"), 0);
        assert_eq!((k.get("bb"), k.get("c"), k.key(1)), (Some(1), None, "bb"));
        // Forced exact mode keeps every slot.
        k.go_exact();
        assert_eq!(
            (k.insert("c"), k.get("a"), k.get("c"), k.key(2)),
            (2, Some(0), Some(2), "c")
        );
    }
}
