-- Schema version 3: a whole batch of deployments in one statement.
--
-- imagetrail_record_v2 is one call per deployment, each taking its app's lock when it runs
-- and each opening a subtransaction (its EXCEPTION block). A batch of them waits between
-- statements for other replicas' locks, one round trip each. This function takes the batch
-- as arrays (one element per deployment, in the order to record them), takes every lock the
-- batch needs at its start in one global order (so two replicas' batches never wait on each
-- other in a cycle), and records each deployment with the same rules as
-- imagetrail_record_v2, answering one row per deployment in the order given. Run as a
-- statement of its own, it is also its own transaction: one round trip and one commit per
-- batch.
--
-- The name rule (`image.name` unique per repository per environment) is checked instead of
-- caught: every named deployment also takes a lock on (environment, repository, name), and
-- the name is taken when another app's current deployment holds it. A replica still on
-- imagetrail_record_v2 does not take that lock; the unique index still holds, and the
-- batch that loses such a race fails whole with unique_violation, which the caller retries
-- (then the check sees the committed name).
-- The first stored deployment with this event_id or this idempotency key, if any.
CREATE FUNCTION imagetrail_stored_v3(p_event_id uuid, p_key text) RETURNS bigint
LANGUAGE sql STABLE AS $fn$
    SELECT min(seq) FROM (
        SELECT d.seq FROM deployments d WHERE d.event_id = p_event_id
        UNION ALL
        SELECT d.seq FROM deployments d WHERE d.idempotency_key = p_key) s
$fn$;

CREATE FUNCTION imagetrail_record_batch_v3(
    p_event_id uuid[], p_environment text[], p_app text[], p_repository text[], p_tag text[],
    p_digest text[], p_index_digest text[], p_os text[], p_arch text[], p_variant text[],
    p_built_at text[], p_revision text[], p_source text[], p_title text[],
    p_description text[], p_deployed_at timestamptz[], p_deployed_at_ns smallint[],
    p_deployed_by text[], p_name text[], p_idempotency_key text[], p_answer jsonb[],
    p_skip_if_current boolean[], p_name_required boolean[], p_stamp text[])
RETURNS TABLE (outcome text, row_seq bigint, other text, stamped_at timestamptz,
               stamped_ns smallint)
LANGUAGE plpgsql AS $fn$
DECLARE
    r record;
    v_key bigint;
    v_cur current_deployments%ROWTYPE;
    v_has_cur boolean;
    v_now timestamptz;
BEGIN
    -- The same app keys as imagetrail_record_v2, so replicas of both versions exclude each
    -- other; taken in ascending key order.
    FOR v_key IN
        SELECT k FROM (
            SELECT hashtextextended('imagetrail app ' || e || chr(10) || a, 0) AS k
              FROM unnest(p_environment, p_app) AS t(e, a)
            UNION
            SELECT hashtextextended(
                       'imagetrail name ' || e || chr(10) || repo || chr(10) || n, 0)
              FROM unnest(p_environment, p_repository, p_name) AS t(e, repo, n)
             WHERE n IS NOT NULL) keys
        ORDER BY k
    LOOP
        PERFORM pg_advisory_xact_lock(v_key);
    END LOOP;

    FOR r IN
        SELECT * FROM unnest(
            p_event_id, p_environment, p_app, p_repository, p_tag, p_digest, p_index_digest,
            p_os, p_arch, p_variant, p_built_at, p_revision, p_source, p_title, p_description,
            p_deployed_at, p_deployed_at_ns, p_deployed_by, p_name, p_idempotency_key,
            p_answer, p_skip_if_current, p_name_required, p_stamp)
            WITH ORDINALITY AS t(
                event_id, environment, app, repository, tag, digest, index_digest, os, arch,
                variant, built_at, revision, source, title, description, deployed_at,
                deployed_at_ns, deployed_by, name, idempotency_key, answer, skip_if_current,
                name_required, stamp, i)
        ORDER BY i
    LOOP
        outcome := NULL;
        row_seq := NULL;
        other := NULL;
        stamped_at := NULL;
        stamped_ns := NULL;

        -- A retry of a stored event or key (also one earlier in this batch). Two index
        -- lookups, not one OR: this statement's plan is cached generic, and a generic OR
        -- over the two indexes is a scan of the table.
        row_seq := imagetrail_stored_v3(r.event_id, r.idempotency_key);
        IF row_seq IS NOT NULL THEN
            outcome := 'duplicate';
            RETURN NEXT;
            CONTINUE;
        END IF;

        SELECT * INTO v_cur FROM current_deployments c
         WHERE c.environment = r.environment AND c.app = r.app;
        v_has_cur := FOUND;
        IF r.skip_if_current AND v_has_cur AND v_cur.repository = r.repository
           AND v_cur.digest = r.digest THEN
            outcome := 'already_current';
            row_seq := v_cur.seq;
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF r.name_required AND r.name IS NULL THEN
            SELECT c.name INTO other FROM current_deployments c
             WHERE c.environment = r.environment AND c.repository = r.repository
               AND c.name IS NOT NULL AND c.app <> r.app
             ORDER BY c.app LIMIT 1;
            IF FOUND THEN
                outcome := 'name_required';
                RETURN NEXT;
                CONTINUE;
            END IF;
        END IF;

        stamped_at := r.deployed_at;
        stamped_ns := r.deployed_at_ns;
        IF r.stamp IN ('write', 'write_seconds') THEN
            v_now := clock_timestamp();
            stamped_ns := 0;
            stamped_at := v_now;
            IF r.stamp = 'write_seconds' THEN
                stamped_at := date_trunc('second', v_now);
                IF v_has_cur AND stamped_at < v_cur.deployed_at
                   AND v_cur.deployed_at <= v_now THEN
                    stamped_at := v_now;
                END IF;
            END IF;
            IF v_has_cur
               AND (stamped_at, stamped_ns) <= (v_cur.deployed_at, v_cur.deployed_at_ns) THEN
                stamped_at := v_cur.deployed_at + interval '1 microsecond';
            END IF;
        END IF;

        -- The name rule, where this deployment becomes its app's current one (a backfill
        -- older than the current deployment does not change who holds a name).
        IF r.name IS NOT NULL AND (NOT v_has_cur
           OR (v_cur.deployed_at, v_cur.deployed_at_ns) <= (stamped_at, stamped_ns)) THEN
            SELECT c.app INTO other FROM current_deployments c
             WHERE c.environment = r.environment AND c.repository = r.repository
               AND c.name = r.name AND c.app <> r.app;
            IF FOUND THEN
                outcome := 'name_taken';
                stamped_at := NULL;
                stamped_ns := NULL;
                RETURN NEXT;
                CONTINUE;
            END IF;
        END IF;

        INSERT INTO deployments (
            event_id, environment, app, repository, tag, digest, index_digest, platform_os,
            platform_architecture, platform_variant, built_at, revision, source, title,
            description, deployed_at, deployed_at_ns, deployed_by, name, idempotency_key,
            answer)
        VALUES (
            r.event_id, r.environment, r.app, r.repository, r.tag,
            r.digest, r.index_digest, r.os, r.arch, r.variant, r.built_at,
            r.revision, r.source, r.title, r.description, stamped_at,
            stamped_ns, r.deployed_by, r.name, r.idempotency_key, r.answer)
        ON CONFLICT DO NOTHING
        RETURNING seq INTO row_seq;
        IF row_seq IS NULL THEN
            -- The same key raced in by a write of another app (another lock).
            row_seq := imagetrail_stored_v3(r.event_id, r.idempotency_key);
            outcome := 'duplicate';
            stamped_at := NULL;
            stamped_ns := NULL;
            RETURN NEXT;
            CONTINUE;
        END IF;
        INSERT INTO current_deployments AS c (
            environment, app, seq, deployed_at, deployed_at_ns, repository, digest, name)
        VALUES (
            r.environment, r.app, row_seq, stamped_at, stamped_ns, r.repository,
            r.digest, r.name)
        ON CONFLICT (environment, app) DO UPDATE
            SET seq = EXCLUDED.seq, deployed_at = EXCLUDED.deployed_at,
                deployed_at_ns = EXCLUDED.deployed_at_ns, repository = EXCLUDED.repository,
                digest = EXCLUDED.digest, name = EXCLUDED.name
            WHERE (c.deployed_at, c.deployed_at_ns, c.seq)
                  <= (EXCLUDED.deployed_at, EXCLUDED.deployed_at_ns, EXCLUDED.seq);
        outcome := 'recorded';
        RETURN NEXT;
    END LOOP;
END
$fn$;
