//! Encoding values as JSON: the bytes `serde_json::to_vec` gives, made
//! faster for text. serde_json escapes a string byte by byte and grows its
//! buffer by doubling; a large string argument or result (the 1 MiB echo
//! of docs/speed.md) spent most of its encoding time there. Here strings,
//! and sequences, tuples, options, integers and booleans around them, are
//! written directly: the buffer is reserved at the string's length and
//! the text is scanned eight bytes at a time for what JSON escapes (the
//! escapes themselves are written by serde_json's own formatter). Any other
//! value (a map, a struct, a float…) is handed to serde_json whole, so the
//! output is always exactly serde_json's. The Rust client encodes arguments,
//! and `#[task]` results, with this.

use serde::ser::{self, Impossible, Serialize};
use serde_json::ser::{CharEscape, CompactFormatter, Formatter};

/// `value` as JSON, byte for byte what `serde_json::to_vec` gives.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::new();
    match value.serialize(Direct { out: &mut out }) {
        Ok(()) => Ok(out),
        Err(Unsupported) => serde_json::to_vec(value),
    }
}

/// Appends `text` as a JSON string (quoted and escaped) to `out`.
fn write_str(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let (mut run, mut at) = (0, 0);
    while at < bytes.len() {
        if let Some(word) = bytes.get(at..at + 8) {
            let word = u64::from_ne_bytes(word.try_into().expect("eight bytes"));
            if !any_escaped(word) {
                at += 8;
                continue;
            }
        }
        if let Some(escape) = escape_of(bytes[at]) {
            out.extend_from_slice(&bytes[run..at]);
            CompactFormatter.write_char_escape(out, escape).expect("writing to a Vec cannot fail");
            run = at + 1;
        }
        at += 1;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// Whether any of the eight bytes of `word` is one JSON escapes: a control
/// character (below 0x20), a quote or a backslash. Exact: each test is the
/// classic "some byte is zero / below n" bit trick.
fn any_escaped(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    (below(word, 0x20) | below(quote, 1) | below(backslash, 1)) & HIGHS != 0
}

/// How serde_json escapes `byte`, if it does.
fn escape_of(byte: u8) -> Option<CharEscape> {
    Some(match byte {
        b'"' => CharEscape::Quote,
        b'\\' => CharEscape::ReverseSolidus,
        0x08 => CharEscape::Backspace,
        0x09 => CharEscape::Tab,
        0x0A => CharEscape::LineFeed,
        0x0C => CharEscape::FormFeed,
        0x0D => CharEscape::CarriageReturn,
        0x00..=0x1F => CharEscape::AsciiControl(byte),
        _ => return None,
    })
}

/// A value this module does not write itself: serde_json writes it.
#[derive(Debug)]
struct Unsupported;

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("left to serde_json")
    }
}

impl std::error::Error for Unsupported {}

impl ser::Error for Unsupported {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Unsupported
    }
}

/// Writes the values it supports into `out`, as serde_json's compact
/// serializer would; anything else is [`Unsupported`] (and `out` dropped).
struct Direct<'o> {
    out: &'o mut Vec<u8>,
}

/// Writes an integer as serde_json does.
macro_rules! integer {
    ($($method:ident: $ty:ty => $write:ident),* $(,)?) => {$(
        fn $method(self, value: $ty) -> Result<(), Unsupported> {
            CompactFormatter.$write(self.out, value).map_err(|_| Unsupported)
        }
    )*};
}

/// Refuses a kind of value (serde_json writes it).
macro_rules! unsupported {
    ($($method:ident($($arg:ty),*)),* $(,)?) => {$(
        fn $method(self, $(_: $arg),*) -> Result<(), Unsupported> {
            Err(Unsupported)
        }
    )*};
}

impl<'o> ser::Serializer for Direct<'o> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Elements<'o>;
    type SerializeTuple = Elements<'o>;
    type SerializeTupleStruct = Elements<'o>;
    type SerializeTupleVariant = Impossible<(), Unsupported>;
    type SerializeMap = Impossible<(), Unsupported>;
    type SerializeStruct = Impossible<(), Unsupported>;
    type SerializeStructVariant = Impossible<(), Unsupported>;

    integer! {
        serialize_i8: i8 => write_i8, serialize_i16: i16 => write_i16, serialize_i32: i32 => write_i32,
        serialize_i64: i64 => write_i64, serialize_i128: i128 => write_i128,
        serialize_u8: u8 => write_u8, serialize_u16: u16 => write_u16, serialize_u32: u32 => write_u32,
        serialize_u64: u64 => write_u64, serialize_u128: u128 => write_u128,
    }

    unsupported! { serialize_f32(f32), serialize_f64(f64), serialize_char(char), serialize_bytes(&[u8]) }

    fn serialize_bool(self, value: bool) -> Result<(), Unsupported> {
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
        Ok(())
    }

    fn serialize_str(self, value: &str) -> Result<(), Unsupported> {
        write_str(self.out, value);
        Ok(())
    }

    fn serialize_none(self) -> Result<(), Unsupported> {
        self.serialize_unit()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Unsupported> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Unsupported> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Unsupported> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<(), Unsupported> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Result<(), Unsupported> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Unsupported> {
        Err(Unsupported)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Elements<'o>, Unsupported> {
        self.out.push(b'[');
        Ok(Elements { out: self.out, first: true })
    }

    fn serialize_tuple(self, len: usize) -> Result<Elements<'o>, Unsupported> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Elements<'o>, Unsupported> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Unsupported> {
        Err(Unsupported)
    }
}

/// The elements of a sequence or tuple being written: `[a,b,c]`.
struct Elements<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl Elements<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
        value.serialize(Direct { out: self.out })
    }

    fn close(self) -> Result<(), Unsupported> {
        self.out.push(b']');
        Ok(())
    }
}

impl ser::SerializeSeq for Elements<'_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.element(value)
    }

    fn end(self) -> Result<(), Unsupported> {
        self.close()
    }
}

impl ser::SerializeTuple for Elements<'_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.element(value)
    }

    fn end(self) -> Result<(), Unsupported> {
        self.close()
    }
}

impl ser::SerializeTupleStruct for Elements<'_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.element(value)
    }

    fn end(self) -> Result<(), Unsupported> {
        self.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that `value` encodes exactly as serde_json encodes it.
    fn same<T: Serialize + ?Sized>(value: &T) {
        assert_eq!(to_vec(value).unwrap(), serde_json::to_vec(value).unwrap());
    }

    #[test]
    fn every_byte_escapes_as_serde_json_escapes_it() {
        // Each ASCII byte alone, and at each place of an eight-byte word
        // (and across two words), among plain letters and multi-byte text.
        for byte in 0u8..0x80 {
            let c = char::from(byte);
            same(&c.to_string());
            for at in 0..17 {
                let mut text: String = "abcdefghijklmnopq".chars().take(17).collect();
                text.replace_range(at..at + 1, &c.to_string());
                same(&text);
                same(&format!("é{text}日本"));
            }
        }
        same("");
        same("\"\\\u{7f}\u{80}\u{ffff}\u{10ffff}\u{1f}\u{0}\n\r\t\u{8}\u{c}/");
        let long: String = (0..100_000u32).map(|i| char::from_u32(i % 0x300).unwrap_or('x')).collect();
        same(&long);
    }

    #[test]
    fn sequences_tuples_options_and_integers_encode_as_serde_json() {
        same(&("text", 1, -2i64, u64::MAX, i128::MIN, true, false, None::<u8>, Some("x"), ()));
        same(&vec!["a", "b\"", "c"]);
        same(&Vec::<String>::new());
        same(&(vec![(1u8, "x")], [[0u16; 3]; 2]));
        struct Newtype(&'static str);
        impl Serialize for Newtype {
            fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_newtype_struct("Newtype", self.0)
            }
        }
        struct Pair(u8, &'static str);
        impl Serialize for Pair {
            fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use ser::SerializeTupleStruct;
                let mut pair = s.serialize_tuple_struct("Pair", 2)?;
                pair.serialize_field(&self.0)?;
                pair.serialize_field(self.1)?;
                pair.end()
            }
        }
        struct Kind;
        impl Serialize for Kind {
            fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_unit_variant("Kind", 0, "Plain")
            }
        }
        same(&(Newtype("n"), Pair(1, "p\n"), Kind));
    }

    #[test]
    fn what_it_does_not_write_serde_json_writes_whole() {
        same(&serde_json::json!({"text": "a\"b", "number": 1.5}));
        same(&("a", 1.5f64, f64::NAN, 'c', serde_json::json!({"k": [1, "v"]})));
        same(&std::collections::BTreeMap::from([(1, "one"), (2, "two")]));
        same(&[Some(1.0f32), None]);
        // An error is serde_json's own.
        assert!(to_vec(&std::collections::BTreeMap::from([((1, 2), 3)])).is_err());
    }
}
