//! The audit log: who changed what, append-only, each entry carrying the SHA-256 of the one before it, so editing or
//! removing a stored entry breaks the chain at that entry and `GET /audit/verify` names it.

use serde::{Deserialize, Serialize};

use super::{JsonWriter, sha256_hex};

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One state-changing call, as recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// `audit_<seq>`.
    pub id: String,
    /// Its place in the log, from 1, without gaps.
    pub seq: u64,
    /// When the call was answered (RFC 3339, ms).
    pub time: String,
    /// The token subject that made the call.
    pub actor: String,
    /// The call: method and route, e.g. `POST /tasks/{task_id}/cancel`.
    pub action: String,
    /// What it changed, e.g. `task:task_…`, `agent:coder-1`, `plugin:least_loaded` (empty when nothing names it).
    pub resource: String,
    /// The request's `x-request-id`.
    pub request_id: String,
    /// `success` (2xx) or `failure`.
    pub outcome: String,
    /// Small facts: the HTTP status, the refusal's code.
    pub details: AuditDetails,
    /// The previous entry's `hash` ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// SHA-256 of `prev_hash` and this entry's other fields.
    pub hash: String,
}

/// An entry before it has a place in the chain.
#[derive(Clone, Debug, PartialEq)]
pub struct NewAuditEntry {
    /// When (store ms).
    pub time_ms: u64,
    /// The token subject.
    pub actor: String,
    /// Method and route.
    pub action: String,
    /// What it changed.
    pub resource: String,
    /// The request id.
    pub request_id: String,
    /// `success` or `failure`.
    pub outcome: String,
    /// Small facts.
    pub details: AuditDetails,
}

/// An entry's small facts: the HTTP status answered and, for a refusal, its problem code.
// Written as the JSON map these were before they were typed (keys sorted, `code` only for a refusal), so the chain's
// hashes are the same bytes; a stored entry whose details hold anything else cannot be read, so verification names
// it. Typed because the map took ~600 bytes of every retained entry for one or two keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditDetails {
    /// A refusal's problem `code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
}

/// The chain's end as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditHead {
    /// The last entry's `seq` (0 for an empty log).
    pub seq: u64,
    /// The last entry's `hash` ([`GENESIS_HASH`] for an empty log).
    pub hash: String,
}

/// The fields a hash covers, in a fixed order: the hash is the SHA-256 of this JSON, which
/// [`AuditEntry::computed_hash`] writes directly (a test holds the two equal).
#[cfg(test)]
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    time: &'a str,
    actor: &'a str,
    action: &'a str,
    resource: &'a str,
    request_id: &'a str,
    outcome: &'a str,
    details: &'a AuditDetails,
    prev_hash: &'a str,
}

impl AuditEntry {
    /// `new` as entry `seq`, chained to `prev_hash`.
    pub fn chained(new: NewAuditEntry, seq: u64, prev_hash: &str) -> AuditEntry {
        let mut entry = AuditEntry {
            id: format!("audit_{seq}"),
            seq,
            time: super::rfc3339_ms(new.time_ms),
            actor: new.actor,
            action: new.action,
            resource: new.resource,
            request_id: new.request_id,
            outcome: new.outcome,
            details: new.details,
            prev_hash: prev_hash.to_string(),
            hash: String::new(),
        };
        entry.hash = entry.computed_hash();
        entry
    }

    /// `new` chained after `end`, in order, and the chain's new end.
    pub fn chain_after(end: &AuditHead, new: impl IntoIterator<Item = NewAuditEntry>) -> (Vec<AuditEntry>, AuditHead) {
        let mut head = end.clone();
        let entries = new
            .into_iter()
            .map(|new| {
                let entry = AuditEntry::chained(new, head.seq + 1, &head.hash);
                head = AuditHead { seq: entry.seq, hash: entry.hash.clone() };
                entry
            })
            .collect();
        (entries, head)
    }

    /// The hash its fields give now (equal to `hash` unless the entry was altered): the SHA-256 of the JSON of
    /// `seq`, `time`, `actor`, `action`, `resource`, `request_id`, `outcome`, `details` and `prev_hash`, in that
    /// order.
    pub fn computed_hash(&self) -> String {
        let mut out = JsonWriter::with_capacity(384);
        out.literal("{\"seq\":").value(&self.seq);
        out.literal(",\"time\":").text(&self.time);
        out.literal(",\"actor\":").text(&self.actor);
        out.literal(",\"action\":").text(&self.action);
        out.literal(",\"resource\":").text(&self.resource);
        out.literal(",\"request_id\":").text(&self.request_id);
        out.literal(",\"outcome\":").text(&self.outcome);
        out.literal(",\"details\":").value(&self.details);
        out.literal(",\"prev_hash\":").text(&self.prev_hash);
        out.literal("}");
        sha256_hex(out.as_bytes())
    }
}

/// What replaces the entries retention removed: the last removed entry's place and hash, signed, so the chain
/// that follows can still be checked from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditCheckpoint {
    /// The last removed entry's `seq`.
    pub seq: u64,
    /// Its `hash`: the next entry's `prev_hash`.
    pub hash: String,
    /// Its time.
    pub time: String,
    /// Hex HMAC-SHA256 of `seq` and `hash` under the audit signing key.
    pub signature: String,
}

impl AuditCheckpoint {
    /// A checkpoint after `entry`, signed with `key`.
    pub fn after(entry: &AuditEntry, key: &[u8]) -> AuditCheckpoint {
        AuditCheckpoint {
            seq: entry.seq,
            hash: entry.hash.clone(),
            time: entry.time.clone(),
            signature: checkpoint_signature(key, entry.seq, &entry.hash),
        }
    }

    /// Whether `key` signed it.
    pub fn signed_by(&self, key: &[u8]) -> bool {
        checkpoint_signature(key, self.seq, &self.hash) == self.signature
    }
}

fn checkpoint_signature(key: &[u8], seq: u64, hash: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("aragora-audit-checkpoint|{seq}|{hash}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Why the chain is broken at an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ChainBreak {
    /// The first entry that does not check.
    pub seq: u64,
    /// Its id.
    pub id: String,
    /// What is wrong: its content changed (`hash_mismatch`), it does not follow the entry before it
    /// (`prev_hash_mismatch`), it is missing (`missing`), or the log's recorded end disagrees with its last entry
    /// (`head_mismatch`).
    pub reason: String,
}

/// Checks `entries` (ascending, consecutive from `after.seq + 1`) against the chain ending at `after`; the first
/// break, if any. Returns the new end of the checked chain.
pub fn check_chain(after: &AuditHead, entries: &[AuditEntry]) -> Result<AuditHead, ChainBreak> {
    let mut head = after.clone();
    for entry in entries {
        let expected = head.seq + 1;
        if entry.seq != expected {
            return Err(ChainBreak { seq: expected, id: format!("audit_{expected}"), reason: "missing".into() });
        }
        if entry.prev_hash != head.hash {
            return Err(ChainBreak { seq: entry.seq, id: entry.id.clone(), reason: "prev_hash_mismatch".into() });
        }
        if entry.computed_hash() != entry.hash {
            return Err(ChainBreak { seq: entry.seq, id: entry.id.clone(), reason: "hash_mismatch".into() });
        }
        head = AuditHead { seq: entry.seq, hash: entry.hash.clone() };
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(actor: &str) -> NewAuditEntry {
        NewAuditEntry {
            time_ms: 1_800_000_000_000,
            actor: actor.into(),
            action: "POST /tasks".into(),
            resource: "task:t".into(),
            request_id: "r".into(),
            outcome: "success".into(),
            details: AuditDetails { code: None, status: 201 },
        }
    }

    #[test]
    fn typed_details_are_written_as_the_json_map_they_replaced() {
        // Entries chained by earlier builds hashed a `serde_json` map (keys sorted): the same bytes keep them valid.
        let cases = [
            (AuditDetails { code: None, status: 201 }, serde_json::json!({"status": 201})),
            (
                AuditDetails { code: Some("task_not_found".into()), status: 404 },
                serde_json::json!({"status": 404, "code": "task_not_found"}),
            ),
        ];
        for (typed, map) in cases {
            assert_eq!(serde_json::to_string(&typed).unwrap(), serde_json::to_string(&map).unwrap());
            assert_eq!(serde_json::from_value::<AuditDetails>(map).unwrap(), typed);
        }
        // Anything else is not details this log wrote.
        assert!(serde_json::from_value::<AuditDetails>(serde_json::json!({"status": 201, "extra": 1})).is_err());
        assert!(serde_json::from_value::<AuditDetails>(serde_json::json!({"status": "201"})).is_err());
    }

    #[test]
    fn the_hash_is_the_sha256_of_the_entrys_json() {
        let mut refused = AuditEntry::chained(new("agent \"7\" \\ ops\n"), 7, GENESIS_HASH);
        refused.details = AuditDetails { code: Some("task_not_found".into()), status: 404 };
        for entry in [AuditEntry::chained(new("a"), 1, GENESIS_HASH), refused] {
            let hashed = Hashed {
                seq: entry.seq,
                time: &entry.time,
                actor: &entry.actor,
                action: &entry.action,
                resource: &entry.resource,
                request_id: &entry.request_id,
                outcome: &entry.outcome,
                details: &entry.details,
                prev_hash: &entry.prev_hash,
            };
            assert_eq!(entry.computed_hash(), sha256_hex(serde_json::to_string(&hashed).unwrap().as_bytes()));
        }
        // Pinned as the build before the hash was written directly computed it: entries already chained check.
        assert_eq!(
            AuditEntry::chained(new("a"), 1, GENESIS_HASH).hash,
            "891fab48251a7f0f28f608bf71513eaf2b7c2afe6779ba6f5ef730c81964e7bf"
        );
    }

    #[test]
    fn an_altered_or_missing_entry_breaks_the_chain_there() {
        let genesis = AuditHead { seq: 0, hash: GENESIS_HASH.into() };
        let first = AuditEntry::chained(new("a"), 1, GENESIS_HASH);
        let second = AuditEntry::chained(new("b"), 2, &first.hash);
        let third = AuditEntry::chained(new("c"), 3, &second.hash);
        let chain = vec![first.clone(), second.clone(), third.clone()];
        assert_eq!(check_chain(&genesis, &chain).unwrap(), AuditHead { seq: 3, hash: third.hash.clone() });

        let mut edited = chain.clone();
        edited[1].actor = "mallory".into();
        assert_eq!(check_chain(&genesis, &edited).unwrap_err().reason, "hash_mismatch");
        assert_eq!(check_chain(&genesis, &edited).unwrap_err().seq, 2);
        // Rehashing the edited entry moves the break to the next one.
        edited[1].hash = edited[1].computed_hash();
        assert_eq!(
            check_chain(&genesis, &edited).unwrap_err(),
            ChainBreak { seq: 3, id: "audit_3".into(), reason: "prev_hash_mismatch".into() }
        );
        let gap = vec![first, third];
        assert_eq!(check_chain(&genesis, &gap).unwrap_err().reason, "missing");
    }
}
