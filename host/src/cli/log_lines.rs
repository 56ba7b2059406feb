//! The fields of a text (`pretty`) log line, written so that a value can never start a line of its own. Many
//! logged values come from clients (paths, ids, refusal details quoting them); tracing's default text fields write
//! them as they are, so a `\n` in one forged a whole log line. Here every control character in a value or in the
//! message is escaped (`\n`, `\u{1b}`…); the JSON format escapes them already.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// Formats fields as `name=value`, space-separated, the message first and unnamed, control characters escaped.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = Visitor { writer: &mut writer, result: Ok(()), first: true };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'a, 'writer> {
    writer: &'a mut Writer<'writer>,
    result: fmt::Result,
    first: bool,
}

impl Visitor<'_, '_> {
    fn write(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !self.first {
                self.writer.write_char(' ')?;
            }
            self.first = false;
            if field.name() != "message" {
                write!(self.writer, "{}=", field.name())?;
            }
            write_escaped(self.writer, value)
        })();
    }
}

impl Visit for Visitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, &format!("{value:?}"));
    }
}

/// Writes `text` with its control characters escaped.
fn write_escaped(out: &mut impl fmt::Write, text: &str) -> fmt::Result {
    for part in text.split_inclusive(char::is_control) {
        match part.chars().last() {
            Some(last) if last.is_control() => {
                out.write_str(&part[..part.len() - last.len_utf8()])?;
                write!(out, "{}", last.escape_default())?;
            }
            _ => out.write_str(part)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::write_escaped;

    fn escaped(text: &str) -> String {
        let mut out = String::new();
        write_escaped(&mut out, text).unwrap();
        out
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escaped("task x\n2026 ERROR forged"), "task x\\n2026 ERROR forged");
        assert_eq!(escaped("a\r\n\u{1b}[31mred"), "a\\r\\n\\u{1b}[31mred");
        assert_eq!(escaped("plain, ünïcode \"quoted\""), "plain, ünïcode \"quoted\"");
        assert_eq!(escaped(""), "");
    }
}
