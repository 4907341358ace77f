//! Duplicate keys in a YAML document, found by walking its mappings with a serde visitor that
//! records each mapping's keys: YAML requires unique keys, but figment keeps the last one whole,
//! which would silently drop a `listeners:` or `security:` block.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

/// A key given twice in one mapping.
#[derive(Debug, PartialEq)]
pub(super) struct Duplicate {
    /// Where the key is in the document: `listeners`, `security.tls`, `listeners[1].name`.
    pub(super) path: String,
    /// Its second occurrence, as the parser saw it (1-based line and column).
    pub(super) at: Option<(usize, usize)>,
}

/// The first key given twice in one mapping of `text`, if any. Text that is not YAML has no
/// duplicates here: parsing it later says what is wrong with it.
pub(super) fn first_duplicate(text: &str) -> Option<Duplicate> {
    let found = RefCell::new(None);
    let walked = Node {
        path: "",
        found: &found,
    }
    .deserialize(serde_yaml::Deserializer::from_str(text));
    let path = found.into_inner()?;
    // The walk stops with an error raised while reading the repeated key, which the parser
    // marks with that key's place.
    let at = walked
        .err()
        .and_then(|e| e.location())
        .map(|l| (l.line(), l.column()));
    Some(Duplicate { path, at })
}

/// One value of the document, at `path`.
#[derive(Clone, Copy)]
struct Node<'a> {
    path: &'a str,
    found: &'a RefCell<Option<String>>,
}

impl<'a> Node<'a> {
    fn at<'b>(&self, path: &'b str) -> Node<'b>
    where
        'a: 'b,
    {
        Node {
            path,
            found: self.found,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            let path = format!("{}[{i}]", self.path);
            if seq.next_element_seed(self.at(&path))?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        loop {
            let key = KeySeed {
                seen: &mut seen,
                parent: self.path,
                found: self.found,
            };
            let Some(name) = map.next_key_seed(key)? else {
                return Ok(());
            };
            let path = join(self.path, name.as_deref().unwrap_or("?"));
            map.next_value_seed(self.at(&path))?;
        }
    }

    /// A tagged value (`!name value`): its value is walked like any other.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        let (IgnoredAny, variant) = data.variant()?;
        variant.newtype_variant_seed(self)
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// A scalar key as YAML compares keys: `1` and `"1"` are different keys.
#[derive(PartialEq, Eq, Hash)]
enum Key {
    Str(String),
    Int(i128),
    Float(u64),
    Bool(bool),
    Null,
}

/// Reads one key of a mapping and records it in the mapping's `seen`; gives its name for the
/// path, or `None` for a key that is itself a list or mapping (never compared).
struct KeySeed<'a> {
    seen: &'a mut HashSet<Key>,
    parent: &'a str,
    found: &'a RefCell<Option<String>>,
}

impl KeySeed<'_> {
    fn record<E: de::Error>(self, key: Key, name: String) -> Result<Option<String>, E> {
        if self.seen.insert(key) {
            return Ok(Some(name));
        }
        *self.found.borrow_mut() = Some(join(self.parent, &name));
        // Raised while the parser is on this key, so the error carries its line and column.
        Err(E::custom("duplicate key"))
    }
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<String>, E> {
        self.record(Key::Str(v.to_string()), v.to_string())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Option<String>, E> {
        self.record(Key::Bool(v), v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<String>, E> {
        self.record(Key::Int(v.into()), v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<String>, E> {
        self.record(Key::Int(v.into()), v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Option<String>, E> {
        self.record(Key::Float(v.to_bits()), v.to_string())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Option<String>, E> {
        self.record(Key::Null, "null".to_string())
    }
    fn visit_none<E: de::Error>(self) -> Result<Option<String>, E> {
        self.visit_unit()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<String>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Option<String>, A::Error> {
        let (IgnoredAny, variant) = data.variant()?;
        variant.newtype_variant::<IgnoredAny>()?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dup(text: &str) -> Option<Duplicate> {
        first_duplicate(text)
    }

    #[test]
    fn a_top_level_key_given_twice_is_named_with_its_second_place() {
        let text = "master_host: a\nlisteners: []\nlisteners:\n  - {name: x}\n";
        assert_eq!(
            dup(text),
            Some(Duplicate {
                path: "listeners".into(),
                at: Some((3, 1)),
            })
        );
    }

    #[test]
    fn a_nested_key_given_twice_is_named_by_its_dotted_path() {
        let text = "\
security:
  tls:
    ca_cert: /a.pem
  tls:
    ca_cert: /b.pem
";
        assert_eq!(
            dup(text),
            Some(Duplicate {
                path: "security.tls".into(),
                at: Some((4, 3)),
            })
        );
    }

    #[test]
    fn a_key_given_twice_in_a_list_item_is_named_with_its_index() {
        let text = "\
listeners:
  - {name: agent, listen: \"127.0.0.1:8080\"}
  - name: tasks
    listen: \"172.17.0.1:8080\"
    name: logs
";
        assert_eq!(
            dup(text),
            Some(Duplicate {
                path: "listeners[1].name".into(),
                at: Some((5, 5)),
            })
        );
    }

    #[test]
    fn the_same_key_in_different_mappings_is_no_duplicate() {
        let text = "\
listeners:
  - {name: a, listen: \"127.0.0.1:1\"}
  - {name: b, listen: \"127.0.0.1:2\"}
security: {tls: {ca_cert: /a.pem}}
tls: {ca_cert: /b.pem}
";
        assert_eq!(dup(text), None);
    }

    #[test]
    fn keys_are_compared_as_yaml_compares_them() {
        // An integer and a string that read alike are two keys; two nulls are one.
        assert_eq!(dup("1: a\n\"1\": b\n"), None);
        assert_eq!(dup("~: a\nnull: b\n").map(|d| d.path), Some("null".into()));
    }

    #[test]
    fn text_that_is_not_yaml_has_no_duplicate() {
        assert_eq!(dup("a: [1, 2\n"), None);
        assert_eq!(dup(""), None);
        assert_eq!(dup("--- {a: 1}\n--- {a: 1}\n"), None);
    }

    #[test]
    fn tagged_values_and_aliases_are_walked() {
        assert_eq!(
            dup("a: !thing {b: 1, b: 2}\n").map(|d| d.path),
            Some("a.b".into())
        );
        assert_eq!(dup("x: &m {b: 1}\ny: *m\n"), None);
    }
}
