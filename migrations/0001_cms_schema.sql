-- 0001_cms_schema.sql — the toygres CMS schema, created or completed.
--
-- Additive and idempotent: on an empty database it creates everything; on a database that
-- already holds toygres' own CMS (enums in `public` or `toygres_cms`, older column sets) it
-- only adds what is missing and never drops, renames or rewrites a row. Run twice, it
-- changes nothing.

CREATE SCHEMA IF NOT EXISTS toygres_cms;

-- The two enums. toygres created them in `public` first and later moved them to
-- `toygres_cms`; whichever exists is used, and only when neither does are they created.
DO $$
DECLARE
    v_schema text;
    v_label  text;
BEGIN
    SELECT n.nspname INTO v_schema
      FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE t.typname = 'instance_state' AND n.nspname IN ('toygres_cms', 'public')
     ORDER BY n.nspname = 'toygres_cms' DESC LIMIT 1;
    IF v_schema IS NULL THEN
        CREATE TYPE toygres_cms.instance_state AS ENUM
            ('creating', 'running', 'stopped', 'deleting', 'deleted', 'failed');
    ELSE
        -- An older enum may lack labels (toygres added 'stopped' later): add them.
        FOREACH v_label IN ARRAY ARRAY['creating', 'running', 'stopped', 'deleting', 'deleted', 'failed'] LOOP
            EXECUTE format('ALTER TYPE %I.instance_state ADD VALUE IF NOT EXISTS %L', v_schema, v_label);
        END LOOP;
    END IF;

    v_schema := NULL;
    SELECT n.nspname INTO v_schema
      FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE t.typname = 'health_status' AND n.nspname IN ('toygres_cms', 'public')
     ORDER BY n.nspname = 'toygres_cms' DESC LIMIT 1;
    IF v_schema IS NULL THEN
        CREATE TYPE toygres_cms.health_status AS ENUM ('healthy', 'unhealthy', 'unknown');
    ELSE
        FOREACH v_label IN ARRAY ARRAY['healthy', 'unhealthy', 'unknown'] LOOP
            EXECUTE format('ALTER TYPE %I.health_status ADD VALUE IF NOT EXISTS %L', v_schema, v_label);
        END LOOP;
    END IF;
END;
$$;

-- The instances table, typed with whichever enums exist (found above or just created).
DO $$
DECLARE
    v_state  text;
    v_health text;
BEGIN
    SELECT format('%I.instance_state', n.nspname) INTO v_state
      FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE t.typname = 'instance_state' AND n.nspname IN ('toygres_cms', 'public')
     ORDER BY n.nspname = 'toygres_cms' DESC LIMIT 1;
    SELECT format('%I.health_status', n.nspname) INTO v_health
      FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE t.typname = 'health_status' AND n.nspname IN ('toygres_cms', 'public')
     ORDER BY n.nspname = 'toygres_cms' DESC LIMIT 1;

    EXECUTE format($sql$
        CREATE TABLE IF NOT EXISTS toygres_cms.instances (
            id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
            user_name VARCHAR(255) NOT NULL,
            k8s_name VARCHAR(255) UNIQUE NOT NULL,
            namespace VARCHAR(255) NOT NULL DEFAULT 'toygres',
            postgres_version VARCHAR(50) NOT NULL,
            storage_size_gb INTEGER NOT NULL,
            use_load_balancer BOOLEAN NOT NULL DEFAULT true,
            dns_name VARCHAR(255),
            ip_connection_string TEXT,
            dns_connection_string TEXT,
            external_ip VARCHAR(45),
            state %1$s NOT NULL DEFAULT 'creating',
            health_status %2$s NOT NULL DEFAULT 'unknown',
            create_orchestration_id TEXT NOT NULL,
            delete_orchestration_id TEXT,
            instance_actor_orchestration_id TEXT,
            created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
            updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
            deleted_at TIMESTAMPTZ,
            tags JSONB NOT NULL DEFAULT '{}'::jsonb,
            last_health_check TIMESTAMPTZ
        )$sql$, v_state, v_health);

    -- Columns an older toygres CMS may lack. Added nullable (or with a constant default),
    -- which PostgreSQL does without rewriting the table.
    ALTER TABLE toygres_cms.instances ADD COLUMN IF NOT EXISTS instance_actor_orchestration_id TEXT;
    ALTER TABLE toygres_cms.instances ADD COLUMN IF NOT EXISTS delete_orchestration_id TEXT;
    ALTER TABLE toygres_cms.instances ADD COLUMN IF NOT EXISTS dns_connection_string TEXT;
    ALTER TABLE toygres_cms.instances ADD COLUMN IF NOT EXISTS ip_connection_string TEXT;
    ALTER TABLE toygres_cms.instances ADD COLUMN IF NOT EXISTS deleted_at TIMESTAMPTZ;
    ALTER TABLE toygres_cms.instances ADD COLUMN IF NOT EXISTS tags JSONB NOT NULL DEFAULT '{}'::jsonb;
    ALTER TABLE toygres_cms.instances ADD COLUMN IF NOT EXISTS last_health_check TIMESTAMPTZ;
    EXECUTE format('ALTER TABLE toygres_cms.instances ADD COLUMN IF NOT EXISTS health_status %s NOT NULL DEFAULT %L',
                   v_health, 'unknown');
END;
$$;

CREATE INDEX IF NOT EXISTS idx_instances_state ON toygres_cms.instances (state);
CREATE INDEX IF NOT EXISTS idx_instances_actor_id ON toygres_cms.instances (instance_actor_orchestration_id)
    WHERE instance_actor_orchestration_id IS NOT NULL;

CREATE OR REPLACE FUNCTION toygres_cms.update_updated_at_column()
RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at = NOW();
    RETURN NEW;
END;
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgrelid = 'toygres_cms.instances'::regclass
                      AND tgname = 'update_instances_updated_at') THEN
        CREATE TRIGGER update_instances_updated_at
            BEFORE UPDATE ON toygres_cms.instances
            FOR EACH ROW EXECUTE FUNCTION toygres_cms.update_updated_at_column();
    END IF;
END;
$$;

CREATE TABLE IF NOT EXISTS toygres_cms.instance_events (
    id BIGSERIAL PRIMARY KEY,
    instance_id UUID NOT NULL REFERENCES toygres_cms.instances(id) ON DELETE CASCADE,
    event_type VARCHAR(100) NOT NULL,
    old_state VARCHAR(50),
    new_state VARCHAR(50),
    message TEXT,
    metadata JSONB DEFAULT '{}'::jsonb,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_instance_events_instance_id ON toygres_cms.instance_events (instance_id);

CREATE TABLE IF NOT EXISTS toygres_cms.instance_health_checks (
    id BIGSERIAL PRIMARY KEY,
    instance_id UUID NOT NULL REFERENCES toygres_cms.instances(id) ON DELETE CASCADE,
    status VARCHAR(50) NOT NULL,
    postgres_version TEXT,
    response_time_ms INTEGER,
    error_message TEXT,
    checked_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    CONSTRAINT unique_health_check_time UNIQUE (instance_id, checked_at)
);
CREATE INDEX IF NOT EXISTS idx_health_checks_checked_at ON toygres_cms.instance_health_checks (checked_at);
