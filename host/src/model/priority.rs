//! Task priority: `critical` (0), `high` (1), `normal` (2, the default), `low` (3). Input accepts the name in any
//! case, the number, or `urgent` (an alias of `critical` sent by existing Aragora clients); output is the name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Task priority; the derived order is the service order (critical first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// Served first. Alias on input: `urgent`.
    Critical,
    /// Served before normal.
    High,
    /// The default.
    #[default]
    Normal,
    /// Served last.
    Low,
}

impl Priority {
    /// All priorities in service order.
    pub const ALL: [Priority; 4] = [Priority::Critical, Priority::High, Priority::Normal, Priority::Low];

    /// The level: 0 (critical) to 3 (low).
    pub fn level(self) -> u8 {
        self as u8
    }

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// The level as a number, if it is 0 to 3.
    pub fn from_level(level: i64) -> Option<Priority> {
        match level {
            0 => Some(Priority::Critical),
            1 => Some(Priority::High),
            2 => Some(Priority::Normal),
            3 => Some(Priority::Low),
            _ => None,
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The message for a priority that is none of the accepted forms.
pub(super) const PRIORITY_HELP: &str = "must be critical, high, normal, low (any case), urgent, or 0 to 3";

impl FromStr for Priority {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Ok(level) = text.parse::<i64>() {
            return Priority::from_level(level).ok_or(PRIORITY_HELP);
        }
        match text.to_ascii_lowercase().as_str() {
            "critical" | "urgent" => Ok(Priority::Critical),
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            _ => Err(PRIORITY_HELP),
        }
    }
}

impl Serialize for Priority {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(text) => text.parse().map_err(serde::de::Error::custom),
            serde_json::Value::Number(n) => {
                n.as_i64().and_then(Priority::from_level).ok_or_else(|| serde::de::Error::custom(PRIORITY_HELP))
            }
            _ => Err(serde::de::Error::custom(PRIORITY_HELP)),
        }
    }
}

/// Written by hand because the wire form is looser than the enum: a name in any case, `urgent`, or a level.
impl utoipa::PartialSchema for Priority {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, SchemaType, Type};
        let name = ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .enum_values(Some(["critical", "high", "normal", "low", "urgent"]))
            .description(Some("A name in any case; `urgent` is an alias of `critical`. Answers use the name."));
        let level = ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::Integer))
            .minimum(Some(0))
            .maximum(Some(3))
            .description(Some("0 = critical … 3 = low."));
        OneOfBuilder::new()
            .item(name)
            .item(level)
            .description(Some("Task priority: critical, high, normal (the default) or low."))
            .into()
    }
}

impl utoipa::ToSchema for Priority {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_in_any_case_numbers_and_urgent() {
        for (input, expected) in [
            ("\"CRITICAL\"", Priority::Critical),
            ("\"urgent\"", Priority::Critical),
            ("\"High\"", Priority::High),
            ("2", Priority::Normal),
            ("\"3\"", Priority::Low),
        ] {
            assert_eq!(serde_json::from_str::<Priority>(input).unwrap(), expected, "{input}");
        }
        for bad in ["\"asap\"", "4", "-1", "null", "1.5"] {
            assert!(serde_json::from_str::<Priority>(bad).is_err(), "{bad}");
        }
        assert_eq!(serde_json::to_string(&Priority::High).unwrap(), "\"high\"");
    }
}
