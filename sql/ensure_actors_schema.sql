-- Our migration bookkeeping (_sqlx_migrations) lives in its own schema, so it can never
-- collide with the table of the same name that toygres' own sqlx migrations keep in public.
CREATE SCHEMA IF NOT EXISTS toygres_actors
