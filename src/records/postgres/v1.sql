-- Schema version 1 of imagetrail's deployment records.

-- Every deployment ever recorded, append-only. `seq` is the order of recording; `event_id`
-- (UUIDv7) is the record's identity across stores (import is idempotent by it).
-- `deployed_at` holds microseconds (PostgreSQL's precision) and `deployed_at_ns` the
-- nanoseconds below them, so a time read from the YAML files comes back exactly.
CREATE TABLE deployments (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id uuid NOT NULL,
    environment text NOT NULL,
    app text NOT NULL,
    repository text NOT NULL,
    tag text,
    digest text NOT NULL,
    index_digest text,
    platform_os text NOT NULL,
    platform_architecture text NOT NULL,
    platform_variant text,
    built_at text,
    revision text,
    source text,
    title text,
    description text,
    deployed_at timestamptz NOT NULL,
    deployed_at_ns smallint NOT NULL DEFAULT 0 CHECK (deployed_at_ns BETWEEN 0 AND 999),
    deployed_by text NOT NULL,
    name text,
    -- One record per Idempotency-Key, and the request's first answer to give its retries.
    idempotency_key text,
    answer jsonb,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT deployments_event_id_key UNIQUE (event_id),
    CONSTRAINT deployments_idempotency_key_key UNIQUE (idempotency_key)
);

-- One app's history in time order, and `at(T)`: one backwards index range scan.
CREATE INDEX deployments_history
    ON deployments (environment, app, deployed_at, deployed_at_ns, seq);
-- Every app's history by time (since/until across apps).
CREATE INDEX deployments_deployed_at ON deployments (deployed_at, deployed_at_ns, seq);

-- What runs now: one row per (environment, app), pointing at the newest deployment by
-- deployed_at (then seq). `repository` and `name` are copied here so the name rule is an
-- index: a name is unique per repository per environment among what runs now.
CREATE TABLE current_deployments (
    environment text NOT NULL,
    app text NOT NULL,
    seq bigint NOT NULL REFERENCES deployments (seq),
    deployed_at timestamptz NOT NULL,
    deployed_at_ns smallint NOT NULL,
    repository text NOT NULL,
    digest text NOT NULL,
    name text,
    PRIMARY KEY (environment, app)
);
CREATE UNIQUE INDEX current_deployments_name
    ON current_deployments (environment, repository, name) WHERE name IS NOT NULL;

-- Record one deployment in one statement, with the rules enforced by the database itself so
-- two replicas racing still record once:
--   * an existing event_id or idempotency_key: 'duplicate' (nothing written; row_seq is the
--     stored row). A concurrent insert of the same key waits for the first to commit.
--   * the name taken by another app's current deployment of the same repository:
--     'name_taken' (nothing written; other is that app), through the unique index above.
--   * p_skip_if_current and the app already runs this repository and digest:
--     'already_current' (row_seq is the current row).
--   * p_name_required, no name, and the repository runs here as named instances:
--     'name_required' (other is one of the names).
--   * else 'recorded'.
CREATE FUNCTION imagetrail_record_v1(
    p_event_id uuid, p_environment text, p_app text, p_repository text, p_tag text,
    p_digest text, p_index_digest text, p_os text, p_arch text, p_variant text,
    p_built_at text, p_revision text, p_source text, p_title text, p_description text,
    p_deployed_at timestamptz, p_deployed_at_ns smallint, p_deployed_by text, p_name text,
    p_idempotency_key text, p_answer jsonb, p_skip_if_current boolean,
    p_name_required boolean,
    OUT outcome text, OUT row_seq bigint, OUT other text)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_constraint text;
    v_cur current_deployments%ROWTYPE;
BEGIN
    IF p_skip_if_current THEN
        SELECT * INTO v_cur FROM current_deployments
         WHERE environment = p_environment AND app = p_app FOR UPDATE;
        IF FOUND AND v_cur.repository = p_repository AND v_cur.digest = p_digest THEN
            outcome := 'already_current';
            row_seq := v_cur.seq;
            RETURN;
        END IF;
    END IF;
    IF p_name_required AND p_name IS NULL THEN
        SELECT c.name INTO other FROM current_deployments c
         WHERE c.environment = p_environment AND c.repository = p_repository
           AND c.name IS NOT NULL AND c.app <> p_app
         ORDER BY c.app LIMIT 1;
        IF FOUND THEN
            outcome := 'name_required';
            RETURN;
        END IF;
    END IF;
    BEGIN
        INSERT INTO deployments (
            event_id, environment, app, repository, tag, digest, index_digest, platform_os,
            platform_architecture, platform_variant, built_at, revision, source, title,
            description, deployed_at, deployed_at_ns, deployed_by, name, idempotency_key, answer)
        VALUES (
            p_event_id, p_environment, p_app, p_repository, p_tag, p_digest, p_index_digest,
            p_os, p_arch, p_variant, p_built_at, p_revision, p_source, p_title, p_description,
            p_deployed_at, p_deployed_at_ns, p_deployed_by, p_name, p_idempotency_key, p_answer)
        ON CONFLICT DO NOTHING
        RETURNING seq INTO row_seq;
        IF row_seq IS NULL THEN
            SELECT d.seq INTO row_seq FROM deployments d
             WHERE d.event_id = p_event_id
                OR (p_idempotency_key IS NOT NULL AND d.idempotency_key = p_idempotency_key)
             ORDER BY d.seq LIMIT 1;
            outcome := 'duplicate';
            RETURN;
        END IF;
        INSERT INTO current_deployments AS c (
            environment, app, seq, deployed_at, deployed_at_ns, repository, digest, name)
        VALUES (
            p_environment, p_app, row_seq, p_deployed_at, p_deployed_at_ns, p_repository,
            p_digest, p_name)
        ON CONFLICT (environment, app) DO UPDATE
            SET seq = EXCLUDED.seq, deployed_at = EXCLUDED.deployed_at,
                deployed_at_ns = EXCLUDED.deployed_at_ns, repository = EXCLUDED.repository,
                digest = EXCLUDED.digest, name = EXCLUDED.name
            WHERE (c.deployed_at, c.deployed_at_ns, c.seq)
                  <= (EXCLUDED.deployed_at, EXCLUDED.deployed_at_ns, EXCLUDED.seq);
        outcome := 'recorded';
    EXCEPTION WHEN unique_violation THEN
        GET STACKED DIAGNOSTICS v_constraint = CONSTRAINT_NAME;
        IF v_constraint = 'current_deployments_name' THEN
            SELECT c.app INTO other FROM current_deployments c
             WHERE c.environment = p_environment AND c.repository = p_repository
               AND c.name = p_name;
            outcome := 'name_taken';
            row_seq := NULL;
            RETURN;
        END IF;
        RAISE;
    END;
END
$fn$;
