//! A JSON value kept as the text it arrived in: a task's payload and result. Checked when it is parsed, then
//! stored, compared and answered as that text, never built into a tree. A parsed `serde_json::Value` keeps each
//! object in a B-tree node of eleven slots (~600 bytes for a small object) for as long as the task is retained, and
//! costs a walk of that tree each time the task is answered; the text costs its own length and a copy.

use std::fmt;

use serde::de::{Error as _, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// JSON text (valid by construction: it was parsed, under the same rules as a `Value`, or serialized).
#[derive(Clone, Debug, Serialize)]
#[serde(transparent)]
pub struct JsonText(Box<RawValue>);

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<JsonText, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        checked(&raw).map_err(D::Error::custom)?;
        Ok(JsonText(raw))
    }
}

/// Reads `raw` as a `Value` would be read, without keeping it. A raw value is only skimmed by the parser (no depth
/// limit, numbers not converted, lone surrogates let through); text that a `Value` could not hold would be stored,
/// then read back as `null` by whoever parses it, or refused by clients' parsers.
fn checked(raw: &RawValue) -> serde_json::Result<()> {
    serde_json::from_str::<Checked>(raw.get()).map(|_| ())
}

/// A value walked through and dropped (`IgnoredAny` would only skim it again).
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Checked, D::Error> {
        deserializer.deserialize_any(Checked)
    }
}

impl<'de> Visitor<'de> for Checked {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Checked, A::Error> {
        while items.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Checked, A::Error> {
        while entries.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

impl JsonText {
    /// `{}`.
    pub fn empty_object() -> JsonText {
        JsonText(RawValue::from_string("{}".to_string()).expect("valid JSON"))
    }

    /// `null`.
    pub fn null() -> JsonText {
        JsonText(RawValue::NULL.to_owned())
    }

    /// The text of `value`.
    pub fn of(value: &impl Serialize) -> JsonText {
        JsonText(serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned()))
    }

    /// Parses `text` (a stored payload or result).
    pub fn parse(text: String) -> Result<JsonText, serde_json::Error> {
        let raw = RawValue::from_string(text)?;
        checked(&raw)?;
        Ok(JsonText(raw))
    }

    /// The text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Whether it is an object (the text of a parsed value starts with its first token).
    pub fn is_object(&self) -> bool {
        self.get().trim_start().starts_with('{')
    }

    /// Whether it is `null`.
    pub fn is_null(&self) -> bool {
        self.get().trim() == "null"
    }

    /// The value, parsed (for the few readers that look inside: deliberations).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.get()).unwrap_or(Value::Null)
    }
}

/// JSON text written piece by piece, for the few records written on every task (a task's answer, an audit entry's
/// hash, a submit's fingerprint): `serde_json` escapes every key and checks every string byte by byte through its
/// serializer, which made these the largest single parts of a task's work. The caller writes punctuation and keys
/// as literals and values through the methods below, in the order the record's definition gives (a task's and an
/// audit entry's derived `Serialize`, the fingerprint's sorted map); a test beside each holds the bytes equal.
pub(crate) struct JsonWriter(Vec<u8>);

impl JsonWriter {
    /// An empty text with room for `capacity` bytes.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        JsonWriter(Vec::with_capacity(capacity))
    }

    /// JSON text as it is: punctuation, keys, or a value already written.
    pub(crate) fn literal(&mut self, json: &str) -> &mut Self {
        self.0.extend_from_slice(json.as_bytes());
        self
    }

    /// A JSON string, escaped as `serde_json` escapes it (only a string holding such a byte goes through it).
    pub(crate) fn text(&mut self, text: &str) -> &mut Self {
        if needs_escape(text.as_bytes()) {
            return self.value(text);
        }
        self.0.reserve(text.len() + 2);
        self.0.push(b'"');
        self.0.extend_from_slice(text.as_bytes());
        self.0.push(b'"');
        self
    }

    /// A string or `null`.
    pub(crate) fn optional_text(&mut self, text: Option<&str>) -> &mut Self {
        match text {
            Some(text) => self.text(text),
            None => self.literal("null"),
        }
    }

    /// Any other value, through `serde_json`.
    pub(crate) fn value(&mut self, value: &(impl Serialize + ?Sized)) -> &mut Self {
        serde_json::to_writer(&mut self.0, value).expect("plain values serialize");
        self
    }

    /// How many bytes are written.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Writes again what was written at `range` (a value written twice is rendered once).
    pub(crate) fn repeat(&mut self, range: std::ops::Range<usize>) -> &mut Self {
        self.0.extend_from_within(range);
        self
    }

    /// The text's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The text.
    pub(crate) fn into_string(self) -> String {
        String::from_utf8(self.0).expect("JSON written from UTF-8 strings is UTF-8")
    }
}

/// Whether `text` holds a byte a JSON string escapes: a control character (below 0x20), `"` or `\`. Eight
/// bytes at a time (a task's answer checks some thirty strings): a word has a byte below `n` (`n` ≤ 0x80) exactly
/// when `(word - n·0x01…01) & !word & 0x80…80` is not zero, and a byte equal to `c` when the word XOR `c·0x01…01`
/// has a byte below 1.
fn needs_escape(text: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH_BITS: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_byte_below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGH_BITS != 0;
    let mut words = text.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_ne_bytes(word.try_into().expect("chunks of eight bytes"));
        if has_byte_below(word, 0x20)
            || has_byte_below(word ^ (ONES * u64::from(b'"')), 1)
            || has_byte_below(word ^ (ONES * u64::from(b'\\')), 1)
        {
            return true;
        }
    }
    words.remainder().iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Equal when the texts are: a repeated report is recognised by sending the same bytes (as the Redis store
/// compares them).
impl PartialEq for JsonText {
    fn eq(&self, other: &JsonText) -> bool {
        self.get() == other.get()
    }
}

/// `null`, as `Value`'s default.
impl Default for JsonText {
    fn default() -> JsonText {
        JsonText::null()
    }
}

impl From<Value> for JsonText {
    fn from(value: Value) -> JsonText {
        JsonText::of(&value)
    }
}

#[cfg(test)]
mod tests {
    use super::JsonText;

    #[test]
    fn a_string_needs_escaping_exactly_when_serde_json_would_escape_it() {
        // Every ASCII byte value (the bytes JSON escapes are all ASCII) at every place of strings up to three words
        // long: in ASCII, after a multi-byte character, and among bytes of 0x80 and above.
        let escapes = |text: &str| serde_json::to_string(text).unwrap() != format!("\"{text}\"");
        for len in 1..=24 {
            for at in 0..len {
                for byte in 0..=0x7fu8 {
                    let mut text = vec![b'a'; len];
                    text[at] = byte;
                    let text = String::from_utf8(text).unwrap();
                    assert_eq!(super::needs_escape(text.as_bytes()), escapes(&text), "{text:?}");
                    let wide = format!("é{text}");
                    assert_eq!(super::needs_escape(wide.as_bytes()), escapes(&wide), "{wide:?}");
                    // Bytes of 0x80 and above beside the probe in every place of a word.
                    let high = format!("{}{}{}", "ÿ".repeat(at), char::from(byte), "ÿ".repeat(len - at));
                    assert_eq!(super::needs_escape(high.as_bytes()), escapes(&high), "{high:?}");
                    let odd = format!("a{high}");
                    assert_eq!(super::needs_escape(odd.as_bytes()), escapes(&odd), "{odd:?}");
                }
            }
        }
        assert!(!super::needs_escape("naïve 日本語 ÿ€ \u{7f}".as_bytes()));
    }

    #[test]
    fn text_is_kept_as_sent_and_answered_verbatim() {
        let body = r#"{"payload": {"z": 1,  "a": [true, null]}}"#;
        #[derive(serde::Deserialize, serde::Serialize)]
        struct Body {
            payload: JsonText,
        }
        let parsed: Body = serde_json::from_str(body).unwrap();
        assert_eq!(parsed.payload.get(), r#"{"z": 1,  "a": [true, null]}"#);
        assert!(parsed.payload.is_object());
        assert_eq!(serde_json::to_string(&parsed).unwrap(), r#"{"payload":{"z": 1,  "a": [true, null]}}"#);
        assert_eq!(parsed.payload.to_value()["a"][0], true);
        assert!(serde_json::from_str::<Body>(r#"{"payload": {"z": }"#).is_err());
        assert!(JsonText::null().is_null() && !JsonText::null().is_object());
        assert_eq!(JsonText::of(&serde_json::json!({"b": 1, "a": 2})).get(), r#"{"a":2,"b":1}"#);
    }

    #[test]
    fn text_a_value_could_not_hold_is_refused() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for bad in [r#"{"n": 1e400}"#, r#"{"s": "\ud800"}"#, r#"{"a": 1,}"#, deep.as_str()] {
            let body = format!(r#"{{"payload": {bad}}}"#);
            assert!(serde_json::from_str::<std::collections::HashMap<String, JsonText>>(&body).is_err(), "{bad}");
            assert!(JsonText::parse(bad.to_string()).is_err(), "{bad}");
        }
        let fine = r#"{"n": -1.5e300, "s": "\ud83d\ude00 é", "deep": [[[[1]]]], "big": 18446744073709551615}"#;
        assert_eq!(JsonText::parse(fine.to_string()).unwrap().get(), fine);
    }
}
