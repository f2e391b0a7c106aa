-- The database's clock (src/clock.rs: every comparison with a database timestamp uses it).
SELECT clock_timestamp()
