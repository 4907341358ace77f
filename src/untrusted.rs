//! Text the proxy did not write (a certificate's names, the master's or an egress proxy's
//! replies, a negotiated ALPN) kept in [`Untrusted`] from where it enters, so that every
//! printer, terminal or log, text or JSON, shows control characters escaped: whoever answers
//! on the master's address must not be able to forge a line or drive the operator's terminal.

use std::fmt::{self, Write};

/// Outside text, raw inside and escaped whenever shown: `Display` and `Serialize` give the
/// escaped form (see [`escape`]), `Debug` the same in double quotes (as `str`'s `Debug` quotes
/// plain text). The raw value is there for logic only (comparing, matching, parsing), through
/// [`Untrusted::raw`], whose name says what is taken.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Untrusted<T = String>(T);

impl<T> Untrusted<T> {
    pub fn new(raw: T) -> Self {
        Untrusted(raw)
    }

    /// The value as it arrived, control characters and all: never to be printed.
    pub fn raw(&self) -> &T {
        &self.0
    }

    pub(crate) fn into_raw(self) -> T {
        self.0
    }
}

impl From<String> for Untrusted {
    fn from(s: String) -> Self {
        Untrusted(s)
    }
}

impl From<&str> for Untrusted {
    fn from(s: &str) -> Self {
        Untrusted(s.to_string())
    }
}

impl<T: AsRef<[u8]>> fmt::Display for Untrusted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0.as_ref(), false)
    }
}

impl<T: AsRef<[u8]>> fmt::Debug for Untrusted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        write_escaped(f, self.0.as_ref(), true)?;
        f.write_char('"')
    }
}

/// The escaped form is what a JSON string holds, so a consumer that decodes the JSON still
/// gets no control character.
impl<T: AsRef<[u8]>> serde::Serialize for Untrusted<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `text` with every control character escaped: C0 (U+0000 to U+001F), DEL and C1 (U+0080 to
/// U+009F) become `\n`, `\r`, `\t`, `\x1b`, `\x7f`, `\u{9b}`; a backslash becomes `\\`, so no
/// text can pass for an escape. Text without either is returned unchanged. In bytes that need
/// not be UTF-8 (`Untrusted<Vec<u8>>`), a byte that is not part of a character becomes `\xNN`
/// (always 80 to ff, so never mistaken for an escaped control character).
pub(crate) fn escape(text: &str) -> String {
    Untrusted::new(text).to_string()
}

fn write_escaped(out: &mut impl Write, bytes: &[u8], quoted: bool) -> fmt::Result {
    for chunk in bytes.utf8_chunks() {
        let text = chunk.valid();
        let mut plain = 0;
        for (at, c) in text.char_indices() {
            let special = c.is_control() || c == '\\' || (quoted && c == '"');
            if !special {
                continue;
            }
            out.write_str(&text[plain..at])?;
            plain = at + c.len_utf8();
            match c {
                '\n' => out.write_str("\\n")?,
                '\r' => out.write_str("\\r")?,
                '\t' => out.write_str("\\t")?,
                '\\' => out.write_str("\\\\")?,
                '"' => out.write_str("\\\"")?,
                c if u32::from(c) < 0x80 => write!(out, "\\x{:02x}", u32::from(c))?,
                c => write!(out, "\\u{{{:x}}}", u32::from(c))?,
            }
        }
        out.write_str(&text[plain..])?;
        for b in chunk.invalid() {
            write!(out, "\\x{b:02x}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn escape_bytes(bytes: &[u8]) -> String {
        Untrusted::new(bytes).to_string()
    }

    #[test]
    fn control_characters_become_visible_escapes() {
        assert_eq!(escape("CN=det-master, O=Ops"), "CN=det-master, O=Ops");
        assert_eq!(escape("é, ü, 日本, 🔒"), "é, ü, 日本, 🔒");
        assert_eq!(
            escape("a\nleaf SHA-256 fingerprint: 00\r\t"),
            "a\\nleaf SHA-256 fingerprint: 00\\r\\t"
        );
        assert_eq!(escape("\x1b[8m\x00\x7f"), "\\x1b[8m\\x00\\x7f");
        assert_eq!(escape("\u{9b}8m \u{85} \u{80}\u{9f}"), "\\u{9b}8m \\u{85} \\u{80}\\u{9f}");
        assert_eq!(escape("\u{a0}\u{100}"), "\u{a0}\u{100}", "only controls");
        assert_eq!(escape("C:\\x1b"), "C:\\\\x1b", "a backslash cannot forge an escape");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_shown_as_hex() {
        assert_eq!(escape_bytes(b"h2"), "h2");
        assert_eq!(escape_bytes(b"\xff\x9b[8m"), "\\xff\\x9b[8m");
        assert_eq!(escape_bytes("\u{9b}".as_bytes()), "\\u{9b}");
        assert_eq!(escape_bytes(b"\xe2\x82"), "\\xe2\\x82", "a cut character");
    }

    #[test]
    fn debug_quotes_and_serde_holds_the_escaped_form() {
        let u = Untrusted::from("say \"hi\"\n");
        assert_eq!(format!("{u:?}"), r#""say \"hi\"\n""#);
        assert_eq!(format!("{:?}", Untrusted::from("CN=a")), format!("{:?}", "CN=a"));
        assert_eq!(u.to_string(), "say \"hi\"\\n");
        let json = serde_json::to_string(&u).unwrap();
        assert_eq!(json, r#""say \"hi\"\\n""#);
        let decoded: String = serde_json::from_str(&json).unwrap();
        assert_eq!(decoded, "say \"hi\"\\n");
        assert_eq!(u.raw(), "say \"hi\"\n");
    }

    /// The escaped form read back, to show that escaping loses nothing.
    fn unescape(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = s;
        while let Some(c) = rest.chars().next() {
            rest = &rest[c.len_utf8()..];
            if c != '\\' {
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                continue;
            }
            let e = rest.chars().next().expect("a complete escape");
            rest = &rest[1..];
            match e {
                'n' => out.push(b'\n'),
                'r' => out.push(b'\r'),
                't' => out.push(b'\t'),
                '\\' => out.push(b'\\'),
                'x' => {
                    out.push(u8::from_str_radix(&rest[..2], 16).unwrap());
                    rest = &rest[2..];
                }
                'u' => {
                    let end = rest.find('}').unwrap();
                    let c = char::from_u32(u32::from_str_radix(&rest[1..end], 16).unwrap());
                    out.extend_from_slice(c.unwrap().encode_utf8(&mut [0; 4]).as_bytes());
                    rest = &rest[end + 1..];
                }
                other => panic!("unknown escape \\{other}"),
            }
        }
        out
    }

    /// Raw controls, and text that looks like their escapes: where a collision would hide.
    fn tricky() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"\\x1b".to_vec()),
            Just(b"\\u{9b}".to_vec()),
            Just(b"\\".to_vec()),
            Just(b"\\n".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\x1b".to_vec()),
            Just("\u{9b}".as_bytes().to_vec()),
            Just(b"\x9b".to_vec()),
            Just(b"\xc2".to_vec()),
            Just(b"x1b".to_vec()),
        ]
    }

    fn nasty() -> impl Strategy<Value = Vec<u8>> {
        let pieces = prop_oneof![
            any::<u8>().prop_map(|b| vec![b]),
            (0u32..0x250).prop_filter_map("a char", char::from_u32).prop_map(|c| c.to_string().into_bytes()),
            tricky(),
        ];
        prop::collection::vec(pieces, 0..24).prop_map(|v| v.concat())
    }

    fn short_tricky() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(tricky(), 0..4).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn escaped_text_holds_no_control_character_and_reads_back(bytes in nasty()) {
            let shown = escape_bytes(&bytes);
            prop_assert!(!shown.chars().any(char::is_control), "{shown:?}");
            prop_assert_eq!(unescape(&shown), bytes.clone());
            if let Ok(text) = std::str::from_utf8(&bytes) {
                prop_assert_eq!(escape(text), shown.clone());
            }
            let quoted = format!("{:?}", Untrusted::new(&bytes));
            prop_assert!(!quoted.chars().any(char::is_control), "{quoted:?}");
        }

        #[test]
        fn distinct_inputs_stay_distinct(a in short_tricky(), b in short_tricky()) {
            prop_assume!(a != b);
            prop_assert_ne!(escape_bytes(&a), escape_bytes(&b));
        }
    }
}
