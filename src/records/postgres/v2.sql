-- Schema version 2: the analytics callbacks, and deployed_at stamped by the writer.

-- Every analytics callback accepted (`POST /api/v1/register`, `/api/v1/scanner-error`),
-- append-only: the request as received, when, and the answer given. `seq` is the order of
-- recording (the dashboard's newest first). One row per (kind, Idempotency-Key): the key and
-- its first answer are a row, so two replicas racing on one key record once and both give
-- the first answer.
CREATE TABLE callbacks (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL,
    received_at timestamptz NOT NULL,
    idempotency_key text,
    -- A register's repository and commit, for the answer to a repeat.
    git_url text,
    git_sha text,
    request jsonb NOT NULL,
    answer jsonb NOT NULL,
    CONSTRAINT callbacks_idempotency_key_key UNIQUE (kind, idempotency_key)
);
-- The last registration of a commit: one backwards index scan.
CREATE INDEX callbacks_registered ON callbacks (git_url, git_sha, seq) WHERE kind = 'register';

-- Record one callback in one statement:
--   * its (kind, key) stored already: 'duplicate', nothing written, answer is the stored
--     answer (a concurrent insert of the same key waits for the first to commit);
--   * else 'recorded' with p_answer, or, for a register (p_repeat given) of a commit
--     registered before, p_repeat with last_scanned_at set to that registration's time in
--     RFC 1123 form. Registrations of one commit are serialised by an advisory lock, so two
--     replicas do not both answer "first registration".
CREATE FUNCTION imagetrail_callback_v2(
    p_kind text, p_key text, p_received_at timestamptz, p_git_url text, p_git_sha text,
    p_request jsonb, p_answer jsonb, p_repeat jsonb,
    OUT outcome text, OUT answer jsonb, OUT row_seq bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_prev timestamptz;
BEGIN
    IF p_key IS NOT NULL THEN
        SELECT c.answer, c.seq INTO answer, row_seq FROM callbacks c
         WHERE c.kind = p_kind AND c.idempotency_key = p_key;
        IF FOUND THEN
            outcome := 'duplicate';
            RETURN;
        END IF;
    END IF;
    answer := p_answer;
    IF p_repeat IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(
            hashtextextended('imagetrail register ' || p_git_url || chr(10) || p_git_sha, 0));
        SELECT c.received_at INTO v_prev FROM callbacks c
         WHERE c.kind = 'register' AND c.git_url = p_git_url AND c.git_sha = p_git_sha
         ORDER BY c.seq DESC LIMIT 1;
        IF FOUND THEN
            -- 'Dy' and 'Mon' are English whatever lc_time says (only 'TMDy' is translated).
            answer := jsonb_set(p_repeat, '{last_scanned_at}', to_jsonb(
                to_char(v_prev AT TIME ZONE 'UTC', 'Dy, DD Mon YYYY HH24:MI:SS "GMT"')));
        END IF;
    END IF;
    INSERT INTO callbacks (kind, received_at, idempotency_key, git_url, git_sha, request, answer)
    VALUES (p_kind, p_received_at, p_key, p_git_url, p_git_sha, p_request, answer)
    ON CONFLICT (kind, idempotency_key) DO NOTHING
    RETURNING seq INTO row_seq;
    IF row_seq IS NULL THEN
        SELECT c.answer, c.seq INTO answer, row_seq FROM callbacks c
         WHERE c.kind = p_kind AND c.idempotency_key = p_key;
        outcome := 'duplicate';
        RETURN;
    END IF;
    outcome := 'recorded';
END
$fn$;

-- imagetrail_record_v1, with deployed_at stamped by the database when p_stamp asks, so an
-- app's history order (deployed_at) is its commit order even with several replicas writing:
--   * every write of one (environment, app) first takes a transaction-scoped advisory lock on
--     it, held until commit, so the writers of one app commit one after another (also the
--     app's first deployment, which has no current row to lock yet);
--   * p_stamp 'write': clock_timestamp() taken under that lock; 'write_seconds': the same in
--     whole seconds, unless the app's current deployment is within this second (then with
--     the fraction); either way strictly after the current deployment (its time + 1 µs when
--     the clock is not past it: replicas' clocks differ), so no two entries of an app have
--     the same stamp;
--   * p_stamp 'given': p_deployed_at as given (a backfill, an import): not reordered.
-- stamped_at/stamped_ns are the deployed_at stored. v1 stays for replicas not yet upgraded.
CREATE FUNCTION imagetrail_record_v2(
    p_event_id uuid, p_environment text, p_app text, p_repository text, p_tag text,
    p_digest text, p_index_digest text, p_os text, p_arch text, p_variant text,
    p_built_at text, p_revision text, p_source text, p_title text, p_description text,
    p_deployed_at timestamptz, p_deployed_at_ns smallint, p_deployed_by text, p_name text,
    p_idempotency_key text, p_answer jsonb, p_skip_if_current boolean,
    p_name_required boolean, p_stamp text,
    OUT outcome text, OUT row_seq bigint, OUT other text, OUT stamped_at timestamptz,
    OUT stamped_ns smallint)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_constraint text;
    v_cur current_deployments%ROWTYPE;
    v_now timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(
        hashtextextended('imagetrail app ' || p_environment || chr(10) || p_app, 0));
    -- A retry of a stored event or key: answered before any rule, like v1's conflict.
    SELECT d.seq INTO row_seq FROM deployments d
     WHERE d.event_id = p_event_id
        OR (p_idempotency_key IS NOT NULL AND d.idempotency_key = p_idempotency_key)
     ORDER BY d.seq LIMIT 1;
    IF FOUND THEN
        outcome := 'duplicate';
        RETURN;
    END IF;
    SELECT * INTO v_cur FROM current_deployments
     WHERE environment = p_environment AND app = p_app;
    IF p_skip_if_current AND FOUND AND v_cur.repository = p_repository
       AND v_cur.digest = p_digest THEN
        outcome := 'already_current';
        row_seq := v_cur.seq;
        RETURN;
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
    stamped_at := p_deployed_at;
    stamped_ns := p_deployed_at_ns;
    IF p_stamp IN ('write', 'write_seconds') THEN
        v_now := clock_timestamp();
        stamped_ns := 0;
        stamped_at := v_now;
        IF p_stamp = 'write_seconds' THEN
            stamped_at := date_trunc('second', v_now);
            IF v_cur.deployed_at IS NOT NULL AND stamped_at < v_cur.deployed_at
               AND v_cur.deployed_at <= v_now THEN
                stamped_at := v_now;
            END IF;
        END IF;
        IF v_cur.deployed_at IS NOT NULL
           AND (stamped_at, stamped_ns) <= (v_cur.deployed_at, v_cur.deployed_at_ns) THEN
            stamped_at := v_cur.deployed_at + interval '1 microsecond';
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
            stamped_at, stamped_ns, p_deployed_by, p_name, p_idempotency_key, p_answer)
        ON CONFLICT DO NOTHING
        RETURNING seq INTO row_seq;
        IF row_seq IS NULL THEN
            -- The same key raced in by a write of another app (another lock).
            SELECT d.seq INTO row_seq FROM deployments d
             WHERE d.event_id = p_event_id
                OR (p_idempotency_key IS NOT NULL AND d.idempotency_key = p_idempotency_key)
             ORDER BY d.seq LIMIT 1;
            outcome := 'duplicate';
            stamped_at := NULL;
            stamped_ns := NULL;
            RETURN;
        END IF;
        INSERT INTO current_deployments AS c (
            environment, app, seq, deployed_at, deployed_at_ns, repository, digest, name)
        VALUES (
            p_environment, p_app, row_seq, stamped_at, stamped_ns, p_repository,
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
            stamped_at := NULL;
            stamped_ns := NULL;
            RETURN;
        END IF;
        RAISE;
    END;
END
$fn$;
