//! The closed sets of an instance row (`toygres_cms.instances`): its `state` and its
//! `health_status`, parsed once where a row is read.
//!
//! Both are PostgreSQL enums the CMS owns (`migrations/0001` makes sure of the labels we
//! use); a label a newer CMS adds is kept as `Other` rather than refused, so a row never
//! fails to load because of it. Read as text (`state::text`), written as text.

use std::fmt;

use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};

/// An instance's lifecycle state (`toygres_cms.instance_state`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum InstanceState {
    Creating,
    Running,
    Stopped,
    Deleting,
    Deleted,
    Failed,
    /// A label this release does not know.
    Other(String),
}

/// An instance's health as the checks last found it (`toygres_cms.health_status`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HealthStatus {
    Healthy,
    Unhealthy,
    Unknown,
    /// A label this release does not know.
    Other(String),
}

macro_rules! text_enum {
    ($ty:ident { $($variant:ident => $label:literal),* $(,)? }) => {
        impl $ty {
            /// The label, as in the database.
            pub fn as_str(&self) -> &str {
                match self {
                    $($ty::$variant => $label,)*
                    $ty::Other(s) => s,
                }
            }
        }

        impl From<&str> for $ty {
            fn from(s: &str) -> Self {
                match s {
                    $($label => $ty::$variant,)*
                    other => $ty::Other(other.to_string()),
                }
            }
        }

        impl From<String> for $ty {
            fn from(s: String) -> Self {
                $ty::from(s.as_str())
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl Type<Postgres> for $ty {
            fn type_info() -> PgTypeInfo {
                <String as Type<Postgres>>::type_info()
            }
            fn compatible(ty: &PgTypeInfo) -> bool {
                <String as Type<Postgres>>::compatible(ty)
            }
        }

        impl PgHasArrayType for $ty {
            fn array_type_info() -> PgTypeInfo {
                <String as PgHasArrayType>::array_type_info()
            }
        }

        impl<'r> Decode<'r, Postgres> for $ty {
            fn decode(value: PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                Ok($ty::from(<&str as Decode<Postgres>>::decode(value)?))
            }
        }

        impl Encode<'_, Postgres> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as Encode<Postgres>>::encode(self.as_str(), buf)
            }
        }
    };
}

text_enum!(InstanceState {
    Creating => "creating",
    Running => "running",
    Stopped => "stopped",
    Deleting => "deleting",
    Deleted => "deleted",
    Failed => "failed",
});

text_enum!(HealthStatus {
    Healthy => "healthy",
    Unhealthy => "unhealthy",
    Unknown => "unknown",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_unknown_ones_are_kept() {
        for s in [
            "creating", "running", "stopped", "deleting", "deleted", "failed",
        ] {
            assert_eq!(InstanceState::from(s).as_str(), s);
            assert!(!matches!(InstanceState::from(s), InstanceState::Other(_)));
        }
        assert_eq!(
            InstanceState::from("upgrading"),
            InstanceState::Other("upgrading".into())
        );
        assert_eq!(HealthStatus::from("unhealthy"), HealthStatus::Unhealthy);
        assert_eq!(
            serde_json::to_string(&HealthStatus::Healthy).unwrap(),
            "\"healthy\""
        );
    }
}
