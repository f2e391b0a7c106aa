-- The health probe: cheap, read-only, works on primaries and standbys alike.
SELECT current_setting('server_version') AS version, pg_is_in_recovery() AS in_recovery
