//! Every SQL statement of the service, by name. The text lives in `sql/*.sql` (and the
//! schema in `migrations/`); this module only loads it.
//!
//! Statements that touch Duroxide's tables contain the placeholder `__DUROXIDE__` for its
//! schema (configurable, validated by [`crate::config::valid_schema_name`]); use
//! [`with_duroxide_schema`].

macro_rules! sql {
    ($($name:ident => $file:literal,)*) => {
        $(pub const $name: &str = include_str!(concat!("../sql/", $file));)*
    };
}

sql! {
    ADVISORY_LOCK => "advisory_lock.sql",
    ADVISORY_UNLOCK => "advisory_unlock.sql",
    DATABASE_EXISTS => "database_exists.sql",
    ENSURE_ACTORS_SCHEMA => "ensure_actors_schema.sql",
    RESET_SEARCH_PATH => "reset_search_path.sql",
    SEARCH_PATH_ACTORS => "search_path_actors.sql",
}

/// Substitute the Duroxide schema into a statement.
pub fn with_duroxide_schema(sql: &str, schema: &str) -> String {
    debug_assert!(crate::config::valid_schema_name(schema));
    sql.replace("__DUROXIDE__", schema)
}
