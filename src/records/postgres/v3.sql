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
    i integer;
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
                       'imagetrail name ' || e || chr(10) || r || chr(10) || n, 0)
              FROM unnest(p_environment, p_repository, p_name) AS t(e, r, n)
             WHERE n IS NOT NULL) keys
        ORDER BY k
    LOOP
        PERFORM pg_advisory_xact_lock(v_key);
    END LOOP;

    FOR i IN 1 .. coalesce(array_length(p_event_id, 1), 0) LOOP
        outcome := NULL;
        row_seq := NULL;
        other := NULL;
        stamped_at := NULL;
        stamped_ns := NULL;

        -- A retry of a stored event or key (also one earlier in this batch).
        SELECT d.seq INTO row_seq FROM deployments d
         WHERE d.event_id = p_event_id[i]
            OR (p_idempotency_key[i] IS NOT NULL AND d.idempotency_key = p_idempotency_key[i])
         ORDER BY d.seq LIMIT 1;
        IF FOUND THEN
            outcome := 'duplicate';
            RETURN NEXT;
            CONTINUE;
        END IF;

        SELECT * INTO v_cur FROM current_deployments c
         WHERE c.environment = p_environment[i] AND c.app = p_app[i];
        v_has_cur := FOUND;
        IF p_skip_if_current[i] AND v_has_cur AND v_cur.repository = p_repository[i]
           AND v_cur.digest = p_digest[i] THEN
            outcome := 'already_current';
            row_seq := v_cur.seq;
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF p_name_required[i] AND p_name[i] IS NULL THEN
            SELECT c.name INTO other FROM current_deployments c
             WHERE c.environment = p_environment[i] AND c.repository = p_repository[i]
               AND c.name IS NOT NULL AND c.app <> p_app[i]
             ORDER BY c.app LIMIT 1;
            IF FOUND THEN
                outcome := 'name_required';
                RETURN NEXT;
                CONTINUE;
            END IF;
        END IF;

        stamped_at := p_deployed_at[i];
        stamped_ns := p_deployed_at_ns[i];
        IF p_stamp[i] IN ('write', 'write_seconds') THEN
            v_now := clock_timestamp();
            stamped_ns := 0;
            stamped_at := v_now;
            IF p_stamp[i] = 'write_seconds' THEN
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
        IF p_name[i] IS NOT NULL AND (NOT v_has_cur
           OR (v_cur.deployed_at, v_cur.deployed_at_ns) <= (stamped_at, stamped_ns)) THEN
            SELECT c.app INTO other FROM current_deployments c
             WHERE c.environment = p_environment[i] AND c.repository = p_repository[i]
               AND c.name = p_name[i] AND c.app <> p_app[i];
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
            p_event_id[i], p_environment[i], p_app[i], p_repository[i], p_tag[i],
            p_digest[i], p_index_digest[i], p_os[i], p_arch[i], p_variant[i], p_built_at[i],
            p_revision[i], p_source[i], p_title[i], p_description[i], stamped_at,
            stamped_ns, p_deployed_by[i], p_name[i], p_idempotency_key[i], p_answer[i])
        ON CONFLICT DO NOTHING
        RETURNING seq INTO row_seq;
        IF row_seq IS NULL THEN
            -- The same key raced in by a write of another app (another lock).
            SELECT d.seq INTO row_seq FROM deployments d
             WHERE d.event_id = p_event_id[i]
                OR (p_idempotency_key[i] IS NOT NULL
                    AND d.idempotency_key = p_idempotency_key[i])
             ORDER BY d.seq LIMIT 1;
            outcome := 'duplicate';
            stamped_at := NULL;
            stamped_ns := NULL;
            RETURN NEXT;
            CONTINUE;
        END IF;
        INSERT INTO current_deployments AS c (
            environment, app, seq, deployed_at, deployed_at_ns, repository, digest, name)
        VALUES (
            p_environment[i], p_app[i], row_seq, stamped_at, stamped_ns, p_repository[i],
            p_digest[i], p_name[i])
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
