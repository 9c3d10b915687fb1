//! What the agent remembers of MCP servers, in memory (a restarted agent starts afresh):
//! each tool's fingerprint when first seen per backend (a policy pin replaces it), the last
//! one seen, and the server's requests the agent passed on to a skill (whose answers alone
//! may go back).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use crate::lock::Locked as _;

/// Most relayed server requests remembered per agent (the oldest are forgotten first).
const RELAYED_MAX: usize = 4096;

#[derive(Default)]
pub struct McpState {
    /// (backend, tool) → fingerprints.
    pins: Mutex<HashMap<(String, String), Pin>>,
    /// Server requests passed on to a skill, and the order they came in.
    relayed: Mutex<(HashSet<Relayed>, Vec<Relayed>)>,
    /// The ids the agent gave the skills' calls in flight: (backend, skill, session, the
    /// skill's id) → the agent's id, and the order they went in (for
    /// `notifications/cancelled`, which names the skill's id).
    in_flight: Mutex<(HashMap<Relayed, String>, Vec<Relayed>)>,
    /// The last id given (see [`McpState::rpc_id`]).
    ids: AtomicU64,
    /// (backend, MCP session) → the skill it was created for, and the order they came in.
    sessions: Mutex<(HashMap<Session, String>, Vec<Session>)>,
}

/// An MCP session: backend, `Mcp-Session-Id`.
type Session = (String, String);

/// Most MCP sessions remembered per agent (the oldest are forgotten first: their skills
/// start new ones).
const SESSIONS_MAX: usize = 65536;

/// A server request passed on to a skill (or a skill's call in flight): backend, skill,
/// session, id.
type Relayed = (String, String, String, String);

fn key_of(backend: &str, skill: &str, session: &str, id: &Value) -> Relayed {
    (
        backend.to_owned(),
        skill.to_owned(),
        session.to_owned(),
        id.to_string(),
    )
}

struct Pin {
    first: String,
    latest: String,
    /// The reference (the policy's pin, or else the first fingerprint) a listing showed
    /// another fingerprint against: the tool stays changed, whatever later listings show,
    /// until the policy pins another fingerprint (or the agent restarts). A server cannot
    /// clear a change by listing the tool as it was (nor a skill by listing it again).
    tainted: Option<String>,
}

/// What a listing says of a tool.
pub(super) enum Seen {
    /// The agent had not seen it before: its fingerprint is pinned now.
    First,
    /// As before.
    Same,
    /// Its fingerprint is not the pinned one (newly so).
    Changed(Change),
}

/// A fingerprint that differs from the pinned one.
pub(super) struct Change {
    pub before: String,
    pub after: String,
}

impl McpState {
    /// Notes that `backend` lists `tool` with fingerprint `seen`: whether it is the first
    /// sight, or a change (from `pinned`, the policy's, or else from the first one seen, and
    /// from what was last seen: a change is reported once).
    pub(super) fn observe(
        &self,
        backend: &str,
        tool: &str,
        seen: &str,
        pinned: Option<&str>,
    ) -> Seen {
        let mut pins = self.pins.locked();
        let key = (backend.to_owned(), tool.to_owned());
        let Some(pin) = pins.get_mut(&key) else {
            pins.insert(
                key,
                Pin {
                    first: pinned.unwrap_or(seen).to_owned(),
                    latest: seen.to_owned(),
                    tainted: pinned.filter(|p| *p != seen).map(str::to_owned),
                },
            );
            return match pinned {
                Some(pinned) if pinned != seen => Seen::Changed(Change {
                    before: pinned.to_owned(),
                    after: seen.to_owned(),
                }),
                _ => Seen::First,
            };
        };
        let reference = pinned.unwrap_or(&pin.first).to_owned();
        let new = pin.latest != seen;
        pin.latest = seen.to_owned();
        if reference != seen {
            pin.tainted = Some(reference.clone());
        }
        if new && reference != seen {
            Seen::Changed(Change {
                before: reference,
                after: seen.to_owned(),
            })
        } else {
            Seen::Same
        }
    }

    /// How `tool` changed, if the last fingerprint seen is not the pinned one (or the policy
    /// pins one and no list has shown the tool yet).
    pub(super) fn changed(
        &self,
        backend: &str,
        tool: &str,
        pinned: Option<&str>,
    ) -> Option<String> {
        let pins = self.pins.locked();
        let Some(pin) = pins.get(&(backend.to_owned(), tool.to_owned())) else {
            // A pin cannot be checked against a fingerprint not seen: such a call goes as a
            // changed tool's would.
            return pinned.map(|pinned| {
                format!(
                    "tool `{tool}` is pinned to {pinned}, and no list has shown it since the \
                     agent started (list the tools first)"
                )
            });
        };
        let reference = pinned.unwrap_or(&pin.first);
        if pin.latest != reference {
            return Some(format!(
                "tool `{tool}` changed since it was pinned: fingerprint {reference} is now {}",
                pin.latest
            ));
        }
        (pin.tainted.as_deref() == Some(reference)).then(|| {
            format!(
                "tool `{tool}` was listed with another fingerprint than {reference} since the \
                 agent started (until the policy pins one anew)"
            )
        })
    }

    /// The fingerprint `backend` last listed `tool` with, if any list has shown it.
    pub(super) fn latest(&self, backend: &str, tool: &str) -> Option<String> {
        self.pins
            .locked()
            .get(&(backend.to_owned(), tool.to_owned()))
            .map(|pin| pin.latest.clone())
    }

    /// A new id for a call forwarded on `backend`, remembered as the one `skill` sent as
    /// `skill_id` on `session`. Every call goes upstream with an id of the agent's: a
    /// server routes answers by id within a session, and a skill reusing one id in two
    /// POSTs would otherwise get one call's answer read (and masked) as the other's.
    pub(super) fn rpc_id(
        &self,
        backend: &str,
        skill: &str,
        session: &str,
        skill_id: &Value,
    ) -> Value {
        let n = self.ids.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("skillgate-{:x}-{n}", *EPOCH);
        let key = key_of(backend, skill, session, skill_id);
        let mut in_flight = self.in_flight.locked();
        let (map, order) = &mut *in_flight;
        if map.insert(key.clone(), id.clone()).is_none() {
            order.push(key);
        }
        if order.len() > RELAYED_MAX {
            let old = order.remove(0);
            map.remove(&old);
        }
        Value::String(id)
    }

    /// The agent's id for the call `skill` sent as `skill_id` on `session`, if it is in
    /// flight (the last one sent with that id).
    pub(super) fn in_flight(
        &self,
        backend: &str,
        skill: &str,
        session: &str,
        skill_id: &Value,
    ) -> Option<Value> {
        let key = key_of(backend, skill, session, skill_id);
        self.in_flight
            .locked()
            .0
            .get(&key)
            .cloned()
            .map(Value::String)
    }

    /// Forgets a call answered (or left unanswered): `id` is the agent's.
    pub(super) fn landed(
        &self,
        backend: &str,
        skill: &str,
        session: &str,
        skill_id: &Value,
        id: &Value,
    ) {
        let key = key_of(backend, skill, session, skill_id);
        let mut in_flight = self.in_flight.locked();
        let (map, order) = &mut *in_flight;
        if map
            .get(&key)
            .is_some_and(|ours| Some(ours.as_str()) == id.as_str())
        {
            map.remove(&key);
            order.retain(|k| *k != key);
        }
    }

    /// Notes that the server gave `skill` the MCP session `session` (the first skill given
    /// one keeps it).
    pub(super) fn session_created(&self, backend: &str, session: &str, skill: &str) {
        let key = (backend.to_owned(), session.to_owned());
        let mut sessions = self.sessions.locked();
        let (map, order) = &mut *sessions;
        if map.contains_key(&key) {
            return;
        }
        map.insert(key.clone(), skill.to_owned());
        order.push(key);
        if order.len() > SESSIONS_MAX {
            let old = order.remove(0);
            map.remove(&old);
        }
    }

    /// The skill the MCP session `session` on `backend` was created for, if the agent saw
    /// it created.
    pub(super) fn session_owner(&self, backend: &str, session: &str) -> Option<String> {
        self.sessions
            .locked()
            .0
            .get(&(backend.to_owned(), session.to_owned()))
            .cloned()
    }

    /// Remembers that the server's request `id` on `session` went to `skill`.
    pub(super) fn relayed(&self, backend: &str, skill: &str, session: &str, id: &Value) {
        let key = key_of(backend, skill, session, id);
        let mut relayed = self.relayed.locked();
        let (set, order) = &mut *relayed;
        if set.insert(key.clone()) {
            order.push(key);
        }
        if order.len() > RELAYED_MAX {
            let old = order.remove(0);
            set.remove(&old);
        }
    }

    /// Whether `skill` may answer the server's request `id` on `session` (once: it went to
    /// that skill on that session).
    pub(super) fn take_relayed(
        &self,
        backend: &str,
        skill: &str,
        session: &str,
        id: &Value,
    ) -> bool {
        let key = key_of(backend, skill, session, id);
        let mut relayed = self.relayed.locked();
        let (set, order) = &mut *relayed;
        if set.remove(&key) {
            order.retain(|k| *k != key);
            true
        } else {
            false
        }
    }
}

/// When the agent started (seconds), in the ids it gives calls: a server may still hold
/// calls a previous run forwarded.
static EPOCH: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_seen_against_the_first_fingerprint_or_the_pin() {
        let state = McpState::default();
        assert!(matches!(state.observe("b", "t", "aa", None), Seen::First));
        assert!(state.changed("b", "t", None).is_none());
        let Seen::Changed(change) = state.observe("b", "t", "bb", None) else {
            panic!("a change");
        };
        assert_eq!(
            (change.before.as_str(), change.after.as_str()),
            ("aa", "bb")
        );
        assert!(
            matches!(state.observe("b", "t", "bb", None), Seen::Same),
            "reported once"
        );
        assert!(
            state
                .changed("b", "t", None)
                .unwrap()
                .contains("aa is now bb")
        );
        // Found by review: listed as it was, the change cleared itself. It stays.
        assert!(matches!(state.observe("b", "t", "aa", None), Seen::Same));
        assert!(
            state
                .changed("b", "t", None)
                .unwrap()
                .contains("another fingerprint than aa")
        );
        assert_eq!(state.latest("b", "t").as_deref(), Some("aa"));
        // A policy pin wins over what was seen first; pinning the new one anew clears it.
        assert!(matches!(
            state.observe("b", "u", "xx", Some("pp")),
            Seen::Changed(_)
        ));
        assert!(state.changed("b", "u", Some("pp")).is_some());
        assert!(state.changed("b", "u", Some("xx")).is_none());
        // The server showing the pinned one again does not clear it.
        state.observe("b", "u", "pp", Some("pp"));
        assert!(state.changed("b", "u", Some("pp")).is_some());
        // Pinned, never listed: not verified, so changed as far as a call goes.
        assert!(state.changed("b", "never", None).is_none());
        assert!(
            state
                .changed("b", "never", Some("pp"))
                .unwrap()
                .contains("no list has shown it")
        );
        let id = serde_json::json!(7);
        assert!(!state.take_relayed("b", "k", "s", &id));
        state.relayed("b", "k", "s", &id);
        assert!(!state.take_relayed("b", "k", "other", &id));
        assert!(!state.take_relayed("b", "another skill", "s", &id));
        assert!(state.take_relayed("b", "k", "s", &id));
        assert!(!state.take_relayed("b", "k", "s", &id), "once");
    }

    #[test]
    fn calls_get_ids_of_the_agents_and_cancellations_find_them() {
        let state = McpState::default();
        let seven = serde_json::json!(7);
        let a = state.rpc_id("b", "k", "s", &seven);
        let b = state.rpc_id("b", "k", "s", &seven);
        assert_ne!(a, b, "one id reused by the skill goes as two");
        assert_ne!(a, seven);
        assert_eq!(state.in_flight("b", "k", "s", &seven), Some(b.clone()));
        assert_eq!(state.in_flight("b", "other", "s", &seven), None);
        assert_eq!(state.in_flight("b", "k", "other", &seven), None);
        state.landed("b", "k", "s", &seven, &a);
        assert_eq!(
            state.in_flight("b", "k", "s", &seven),
            Some(b.clone()),
            "not a's"
        );
        state.landed("b", "k", "s", &seven, &b);
        assert_eq!(state.in_flight("b", "k", "s", &seven), None);
    }

    #[test]
    fn a_session_belongs_to_the_skill_it_was_created_for() {
        let state = McpState::default();
        assert_eq!(state.session_owner("b", "s1"), None);
        state.session_created("b", "s1", "k");
        state.session_created("b", "s1", "other");
        assert_eq!(state.session_owner("b", "s1").as_deref(), Some("k"));
        assert_eq!(state.session_owner("c", "s1"), None);
    }
}
