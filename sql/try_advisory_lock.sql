-- Leadership: a session-level lock, released by the server when our connection goes.
SELECT pg_try_advisory_lock($1)
