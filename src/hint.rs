//! Hints: what a notification says, parsed at the edge into types, once.
//!
//! A hint names an instance and what happened to it (a `toygres_instances` payload from the
//! CMS triggers) or asks for a restart or a reconcile (`toygres_actor_control`). It is never
//! trusted beyond that: anyone who can CONNECT can send one, so it only makes the reconciler
//! look at the row ([`crate::reconcile`]), which decides.

use serde::Deserialize;
use uuid::Uuid;

use crate::config;

/// What a `toygres_instances` hint says happened to the row (its `op`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HintKind {
    /// A row was inserted.
    Insert,
    /// A row was deleted.
    Delete,
    /// A row's state changed.
    State,
    /// Someone other than us wrote the row's actor id (toygres' create flow).
    Actor,
}

impl HintKind {
    pub const ALL: [HintKind; 4] = [
        HintKind::Insert,
        HintKind::Delete,
        HintKind::State,
        HintKind::Actor,
    ];

    /// The `op` of the payload, and the label of metrics and decisions.
    pub const fn as_str(self) -> &'static str {
        match self {
            HintKind::Insert => "insert",
            HintKind::Delete => "delete",
            HintKind::State => "state",
            HintKind::Actor => "actor",
        }
    }

    fn parse(op: &str) -> Option<HintKind> {
        HintKind::ALL.into_iter().find(|k| k.as_str() == op)
    }
}

impl std::fmt::Display for HintKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a payload was not taken (counted and logged as an invalid notification).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HintError {
    #[error("payload of {0} bytes is too large")]
    TooLarge(usize),
    #[error("not the trigger's JSON: {0}")]
    NotTriggerJson(String),
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("unknown op `{0}`")]
    UnknownOp(String),
    #[error("unknown command `{0}`")]
    UnknownCommand(String),
    #[error("restart without a name")]
    RestartWithoutName,
    #[error("restart * is not allowed: name one instance")]
    RestartAll,
}

/// A `toygres_instances` hint (only what we use of the payload).
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceEvent {
    pub op: HintKind,
    pub id: Uuid,
    pub k8s_name: Option<String>,
    /// Trigger clock, epoch seconds.
    pub at: Option<f64>,
}

#[derive(Deserialize)]
struct InstanceJson {
    op: String,
    id: Uuid,
    #[serde(default)]
    k8s_name: Option<String>,
    #[serde(default)]
    at: Option<f64>,
}

/// Parse and validate a `toygres_instances` payload.
pub fn parse_instance_event(payload: &str) -> Result<InstanceEvent, HintError> {
    if payload.len() > config::MAX_CONTROL_PAYLOAD {
        return Err(HintError::TooLarge(payload.len()));
    }
    let j: InstanceJson =
        serde_json::from_str(payload).map_err(|e| HintError::NotTriggerJson(e.to_string()))?;
    let op = HintKind::parse(&j.op).ok_or_else(|| HintError::UnknownOp(truncate(&j.op, 40)))?;
    Ok(InstanceEvent {
        op,
        id: j.id,
        k8s_name: j.k8s_name,
        at: j.at,
    })
}

/// A request on `toygres_actor_control`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Restart {
        name: String,
        request_id: Option<i64>,
    },
    Reconcile {
        name: String,
    },
    ReconcileAll,
}

#[derive(Deserialize)]
struct ControlJson {
    op: String,
    #[serde(default)]
    k8s_name: Option<String>,
    #[serde(default)]
    request_id: Option<i64>,
}

/// Parse `restart <name>`, `reconcile <name>`, `reconcile *`, or the JSON form
/// `{"op":"restart"|"reconcile","k8s_name":"…"}`.
pub fn parse_control(payload: &str) -> Result<Control, HintError> {
    if payload.len() > config::MAX_CONTROL_PAYLOAD {
        return Err(HintError::TooLarge(payload.len()));
    }
    let text = payload.trim();
    if text.starts_with('{') {
        let j: ControlJson =
            serde_json::from_str(text).map_err(|e| HintError::MalformedJson(e.to_string()))?;
        let name = j
            .k8s_name
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty());
        return match (j.op.as_str(), name) {
            ("restart", Some(name)) => Ok(Control::Restart {
                name,
                request_id: j.request_id,
            }),
            ("reconcile", Some(name)) if name == "*" => Ok(Control::ReconcileAll),
            ("reconcile", Some(name)) => Ok(Control::Reconcile { name }),
            ("reconcile", None) => Ok(Control::ReconcileAll),
            ("restart", None) => Err(HintError::RestartWithoutName),
            (op, _) => Err(HintError::UnknownOp(truncate(op, 40))),
        };
    }
    let (verb, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let name = rest.trim();
    match (verb, name) {
        ("restart", "") => Err(HintError::RestartWithoutName),
        ("restart", "*") => Err(HintError::RestartAll),
        ("restart", n) => Ok(Control::Restart {
            name: n.to_string(),
            request_id: None,
        }),
        ("reconcile", "*") | ("reconcile", "") => Ok(Control::ReconcileAll),
        ("reconcile", n) => Ok(Control::Reconcile {
            name: n.to_string(),
        }),
        (v, _) => Err(HintError::UnknownCommand(truncate(v, 40))),
    }
}

/// At most `max` characters of `s`, an ellipsis when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_payloads() {
        assert_eq!(
            parse_control("restart pg-1").unwrap(),
            Control::Restart {
                name: "pg-1".into(),
                request_id: None
            }
        );
        assert_eq!(
            parse_control(r#"{"op":"restart","k8s_name":"pg-2","request_id":7}"#).unwrap(),
            Control::Restart {
                name: "pg-2".into(),
                request_id: Some(7)
            }
        );
        assert_eq!(parse_control("reconcile *").unwrap(), Control::ReconcileAll);
        assert_eq!(
            parse_control("reconcile pg-3").unwrap(),
            Control::Reconcile {
                name: "pg-3".into()
            }
        );
        assert!(parse_control("restart").is_err());
        assert!(parse_control("restart *").is_err());
        assert!(parse_control("drop table x").is_err());
        assert!(parse_control("{not json").is_err());
        assert!(parse_control(r#"{"op":"delete","k8s_name":"x"}"#).is_err());
        assert!(parse_control(&"x".repeat(9000)).is_err());
        // Names are taken literally (quotes and all); the lookup is parameterised.
        assert_eq!(
            parse_control("restart a'b; drop").unwrap(),
            Control::Restart {
                name: "a'b; drop".into(),
                request_id: None
            }
        );
    }

    #[test]
    fn instance_payloads() {
        let id = Uuid::new_v4();
        let ok = format!(
            r#"{{"op":"insert","id":"{id}","k8s_name":"a","old_state":null,"new_state":"creating","at":1.5}}"#
        );
        let ev = parse_instance_event(&ok).unwrap();
        assert_eq!(ev.id, id);
        assert_eq!(ev.at, Some(1.5));
        assert!(parse_instance_event(r#"{"op":"insert","id":"nope"}"#).is_err());
        assert!(parse_instance_event(&format!(r#"{{"op":"truncate","id":"{id}"}}"#)).is_err());
        assert!(parse_instance_event("garbage").is_err());
    }
}
