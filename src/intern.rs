//! Interned names (pure, no I/O): the column names and NGSI attribute types that every record of
//! a stream repeats are held once, and each record's cells share them.
//!
//! A record used to own a `String` per column name and per attribute type: about 20 small
//! allocations and 500 bytes per record of the benchmark's workload while it waited in a
//! window. An interned name is one pointer-sized reference count away.

use std::cell::RefCell;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

/// A shared, immutable name (a column name or an NGSI type); compares and hashes as its text.
pub type Name = Arc<str>;

/// Names kept per thread before the set starts again. Names a stream repeats are few (its
/// attributes and types); a stream of ever-new attribute names must not grow the set without
/// bound, and names already handed out stay valid when it is cleared.
const MAX_NAMES: usize = 4096;

/// Longest name kept, in bytes: Orion refuses entity, attribute and type names over 256
/// characters, so longer ones come from elsewhere (a hostile producer) and are handed out
/// without being kept — a stream of megabyte-long names must not fill the sets.
const MAX_KEPT_BYTES: usize = 256;

thread_local! {
    // FxHash: names are short and not chosen to collide (the set is bounded anyway), and
    // SipHash took longer than the allocation it saves.
    static NAMES: RefCell<FxHashSet<Name>> = RefCell::new(FxHashSet::default());
    // Mixed-case names to their lower-case forms, bounded like `NAMES`.
    static LOWER: RefCell<FxHashMap<Name, Name>> = RefCell::new(FxHashMap::default());
}

/// The shared [`Name`] for `text`: the one already held by this thread, or a new one.
pub fn intern(text: &str) -> Name {
    if text.len() > MAX_KEPT_BYTES {
        return Name::from(text);
    }
    NAMES.with_borrow_mut(|names| {
        if let Some(name) = names.get(text) {
            return Name::clone(name);
        }
        if names.len() >= MAX_NAMES {
            names.clear();
        }
        let name: Name = Arc::from(text);
        names.insert(Name::clone(&name));
        name
    })
}

/// The interned lower-case form of `name` (a column name from an attribute name): `name`
/// itself when it is lower-case ASCII already (most are), so neither a lookup nor an
/// allocation is paid per record; otherwise its Unicode lower-case form, remembered per thread.
pub fn lowercase(name: &Name) -> Name {
    if !name
        .bytes()
        .any(|b| b.is_ascii_uppercase() || !b.is_ascii())
    {
        return Name::clone(name);
    }
    if name.len() > MAX_KEPT_BYTES {
        return intern(&name.to_lowercase());
    }
    LOWER.with_borrow_mut(|lower| {
        if let Some(l) = lower.get(&**name) {
            return Name::clone(l);
        }
        if lower.len() >= MAX_NAMES {
            lower.clear();
        }
        let l = intern(&name.to_lowercase());
        lower.insert(Name::clone(name), Name::clone(&l));
        l
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_share_one_name() {
        let a = intern("temperature");
        let b = intern(&String::from("temperature"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "temperature");
        assert!(!Arc::ptr_eq(&a, &intern("pressure")));
    }

    #[test]
    fn lowercase_forms_are_shared_and_lower_case_names_are_themselves() {
        let lower = intern("temperature");
        assert!(Arc::ptr_eq(&lowercase(&lower), &lower));
        let mixed = intern("TimeInstant");
        assert_eq!(&*lowercase(&mixed), "timeinstant");
        assert!(Arc::ptr_eq(&lowercase(&mixed), &lowercase(&mixed)));
        assert!(Arc::ptr_eq(&lowercase(&mixed), &intern("timeinstant")));
        assert_eq!(&*lowercase(&intern("ÁREA")), "área");
        assert_eq!(&*lowercase(&intern("área")), "área");
    }

    #[test]
    fn long_names_are_handed_out_but_not_kept() {
        let long = "N".repeat(MAX_KEPT_BYTES + 1);
        let a = intern(&long);
        assert_eq!(&*a, long);
        assert!(!Arc::ptr_eq(&a, &intern(&long)));
        assert_eq!(*lowercase(&a), *long.to_lowercase());
        assert!(NAMES.with_borrow(|n| !n.contains(long.as_str())));
        assert!(LOWER.with_borrow(|l| !l.contains_key(long.as_str())));
    }

    #[test]
    fn the_set_is_bounded_and_names_outlive_it() {
        let first = intern("n0");
        for i in 1..=MAX_NAMES + 10 {
            intern(&format!("n{i}"));
        }
        assert!(NAMES.with_borrow(|n| n.len()) <= MAX_NAMES);
        assert_eq!(&*first, "n0");
        assert_eq!(intern("n0"), first);
    }
}
