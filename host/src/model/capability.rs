//! Capabilities: what an agent can do and a task requires. At most 64 characters of `[a-z0-9._:-]` after trimming
//! and lower-casing. A set is kept sorted and deduplicated, so the sorted required set of a task is its
//! *signature*: the key of the pending index a claim looks up (DESIGN §4).
//!
//! Every agent also holds its *address*, `agent:<its id, lower-cased>`, in its claims (never in its registration,
//! and never in a waiting claim): a task that requires an address is for that agent alone, the way a worker's
//! own queue is in Celery. Deliberation rounds use it to give each participant its own slot. Agents may not
//! register `agent:` capabilities: the prefix is reserved.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ValidationError;

/// Normalises one capability (trim, lower-case) and checks its characters and length.
pub fn normalize_capability(field: &str, raw: &str) -> Result<String, ValidationError> {
    let capability = raw.trim().to_ascii_lowercase();
    // An address holds a whole agent id (up to 128 characters).
    let longest = if capability.starts_with(ADDRESS_PREFIX) { ADDRESS_PREFIX.len() + 128 } else { 64 };
    if capability.is_empty() || capability.len() > longest {
        return Err(ValidationError::new(field, "a capability must be 1 to 64 characters"));
    }
    if !capability
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(ValidationError::new(field, format!("{raw:?} may only contain a-z, 0-9, '.', '_', ':' and '-'")));
    }
    Ok(capability)
}

/// The prefix of an agent's address capability.
pub const ADDRESS_PREFIX: &str = "agent:";

/// The address capability of an agent: held by its claims alone (the Redis store's `address_of` mirrors it).
pub fn address_of(agent_id: &str) -> String {
    let mut address = String::with_capacity(ADDRESS_PREFIX.len() + agent_id.len());
    address.push_str(ADDRESS_PREFIX);
    address.extend(agent_id.chars().map(|c| c.to_ascii_lowercase()));
    address
}

/// A sorted, deduplicated set of capabilities.
// Shared, not owned: a task's set is copied into the pending index, the routing and every answer, and an agent's
// into each of its claims and waits. A change builds a new set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, utoipa::ToSchema)]
#[schema(value_type = Vec<String>)]
pub struct CapabilitySet(Arc<[String]>);

impl Serialize for CapabilitySet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for CapabilitySet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<String>::deserialize(deserializer).map(|capabilities| CapabilitySet(capabilities.into()))
    }
}

impl CapabilitySet {
    /// Validates and normalises `raw` (field name for errors, e.g. `required_capabilities`), at most `limit`.
    pub fn parse(field: &str, raw: &[String], limit: usize) -> Result<Self, ValidationError> {
        let mut capabilities = raw
            .iter()
            .enumerate()
            // The field's name with its index is written only for the error: a valid set allocates no names.
            .map(|(i, c)| {
                normalize_capability(field, c).map_err(|mut error| {
                    error.field = format!("{field}[{i}]");
                    error
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        capabilities.sort();
        capabilities.dedup();
        if capabilities.len() > limit {
            return Err(ValidationError::new(field, format!("at most {limit} capabilities")));
        }
        Ok(CapabilitySet(capabilities.into()))
    }

    /// A set from already-normalised capabilities (sorted and deduplicated here).
    pub fn from_normalized(mut capabilities: Vec<String>) -> Self {
        capabilities.sort();
        capabilities.dedup();
        CapabilitySet(capabilities.into())
    }

    /// The capabilities of `self` that `registered` holds: a claim's capabilities narrowed to the agent's, never
    /// wider than its registration.
    pub fn narrowed_to(&self, registered: &CapabilitySet) -> CapabilitySet {
        CapabilitySet(self.0.iter().filter(|c| registered.contains(c)).cloned().collect())
    }

    /// The set with the agent's address added: what its claims match on.
    pub fn with_address_of(self, agent_id: &str) -> CapabilitySet {
        let address = address_of(agent_id);
        match self.0.binary_search(&address) {
            Ok(_) => self,
            Err(at) => {
                let mut capabilities = Vec::with_capacity(self.0.len() + 1);
                capabilities.extend_from_slice(&self.0[..at]);
                capabilities.push(address);
                capabilities.extend_from_slice(&self.0[at..]);
                CapabilitySet(capabilities.into())
            }
        }
    }

    /// Whether every capability of `self` is in `other` (all-of matching; the empty set matches anyone).
    pub fn is_subset_of(&self, other: &CapabilitySet) -> bool {
        // Both sorted: one merge pass.
        let mut theirs = other.0.iter();
        self.0.iter().all(|mine| theirs.any(|t| t == mine))
    }

    /// Whether the set holds `capability`.
    pub fn contains(&self, capability: &str) -> bool {
        self.0.binary_search_by(|c| c.as_str().cmp(capability)).is_ok()
    }

    /// The capabilities, sorted.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// Number of capabilities.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds and removes capabilities (policy modifications), keeping the set sorted.
    pub fn apply(&mut self, add: &[String], remove: &[String]) {
        let kept = self.0.iter().filter(|c| !remove.contains(c));
        *self = CapabilitySet::from_normalized(kept.chain(add).cloned().collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> CapabilitySet {
        CapabilitySet::parse("c", &items.iter().map(|s| s.to_string()).collect::<Vec<_>>(), 64).unwrap()
    }

    #[test]
    fn normalises_sorts_and_deduplicates() {
        assert_eq!(set(&[" Code", "debate", "code"]).as_slice(), &["code".to_string(), "debate".to_string()]);
        let error = CapabilitySet::parse("required_capabilities", &["ok".into(), "no spaces".into()], 16).unwrap_err();
        assert_eq!(error.field, "required_capabilities[1]");
    }

    #[test]
    fn subset_is_all_of() {
        assert!(set(&[]).is_subset_of(&set(&["a"])));
        assert!(set(&["a", "c"]).is_subset_of(&set(&["a", "b", "c"])));
        assert!(!set(&["a", "d"]).is_subset_of(&set(&["a", "b", "c"])));
    }
}
