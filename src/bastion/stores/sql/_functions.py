"""The PostgreSQL function that decides every tier of a request in one statement.

A port of `bastion._core.algorithms` to PL/pgSQL, so a rate-limit decision on PostgreSQL is one
autocommit ``SELECT`` (one round trip) instead of BEGIN, upsert, UPDATE, COMMIT. It creates
missing buckets and locks them all in key order (so two requests sharing buckets never wait
on each other in a cycle), decides each tier, and writes the new states only when every tier
allowed: all-or-nothing, atomic as one statement. The equivalence tests hold it to the Python
answers.

The name carries `VERSION`: a bastion whose algorithm changes bumps it, so an upgraded store
calls (and creates) the new function while processes still on the old version keep theirs.
Every division below has a non-negative dividend, or one whose sign a ``greatest(0, …)``
decides, so PostgreSQL's truncating ``/`` equals Python's floor ``//``.
"""

from __future__ import annotations

from bastion._core.algorithms import MAX_CLOCK_LEAD_MS

__all__ = [
    "CLOCK_MS",
    "VERSION",
    "drop_ddl",
    "function_ddl",
    "function_name",
    "mysql_ddl",
    "mysql_drop_ddl",
]

VERSION = 2

CLOCK_MS = {
    "postgresql": "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint",
    # UTC arithmetic, so no session time zone (or its DST hour) moves it
    "mysql": "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) DIV 1000",
    # 'now' is the host's clock, fixed within a statement
    "sqlite": "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)",
}
"""Each database's own clock in ms since the epoch, as an SQL expression."""

_RETRY = """
CREATE OR REPLACE FUNCTION {retry}(
  p_limit bigint, p_window bigint, p_cost bigint, p_current bigint, p_previous bigint,
  p_elapsed bigint
) RETURNS bigint LANGUAGE plpgsql IMMUTABLE AS $body$
DECLARE
  v_left bigint := p_window - p_elapsed;
  v_spare bigint := p_limit - p_current - p_cost;
BEGIN
  IF v_spare >= 0 AND p_previous > 0 THEN
    RETURN greatest(1, p_window - (v_spare * p_window) / p_previous - p_elapsed);
  END IF;
  IF p_limit < p_cost THEN
    RETURN v_left + p_window;
  END IF;
  IF p_current = 0 THEN
    RETURN v_left;
  END IF;
  RETURN v_left + greatest(0, p_window - ((p_limit - p_cost) * p_window) / p_current);
END
$body$
"""

_HIT = """
CREATE OR REPLACE FUNCTION {hit}(
  p_keys text[], p_algorithms text[], p_limits bigint[], p_windows bigint[], p_costs bigint[],
  p_now bigint
) RETURNS TABLE (allowed boolean, remaining bigint, reset_ms bigint, retry_after_ms bigint)
LANGUAGE plpgsql AS $body$
DECLARE
  v_n int := coalesce(array_length(p_keys, 1), 0);
  v_oks boolean[] := '{{}}';
  v_remaining bigint[] := '{{}}';
  v_resets bigint[] := '{{}}';
  v_retries bigint[] := '{{}}';
  v_states bigint[] := '{{}}';
  v_all boolean := true;
  i int;
  v_alg text; v_limit bigint; v_window bigint; v_cost bigint; v_now bigint; v_clock bigint;
  s0 bigint; s1 bigint; s2 bigint; v_until bigint; v_has boolean; v_time bigint;
  v_start bigint; v_count bigint; v_previous bigint; v_elapsed bigint; v_left bigint;
  v_ok boolean; v_rem bigint; v_reset bigint; v_retry bigint;
  v_backlog bigint; v_capacity bigint; v_wanted bigint; v_tat bigint;
  n0 bigint; n1 bigint; n2 bigint; v_expires bigint;
BEGIN
  -- a no-op update on conflict still locks the row; rows are locked in key order
  INSERT INTO {buckets} AS b (key, state_0, state_1, state_2, expires_at)
  SELECT k, 0, 0, 0, 0 FROM (SELECT DISTINCT unnest(p_keys) AS k) AS u ORDER BY k COLLATE "C"
  ON CONFLICT (key) DO UPDATE SET state_0 = b.state_0;
  -- the database's clock unless the caller passed its own, read once the rows are locked
  v_clock := coalesce(p_now, {clock});
  FOR i IN 1 .. v_n LOOP
    v_alg := p_algorithms[i]; v_limit := p_limits[i]; v_window := p_windows[i];
    v_cost := p_costs[i]; v_now := v_clock;
    SELECT b.state_0, b.state_1, b.state_2, b.expires_at INTO s0, s1, s2, v_until
      FROM {buckets} AS b WHERE b.key = p_keys[i];
    v_has := v_until > v_now;
    -- algorithms._as_of: decide as of the bucket's own time when the caller's clock lags
    IF v_has THEN
      v_time := CASE WHEN v_alg = 'g' THEN s2 ELSE s0 END;
      IF v_time > v_now THEN
        IF v_time - v_now > {max_lead} THEN
          v_has := false;
        ELSE
          v_now := v_time;
        END IF;
      END IF;
    END IF;
    IF v_alg = 'f' THEN
      v_start := v_now - mod(v_now, v_window);
      v_count := CASE WHEN v_has AND s0 = v_start THEN s1 ELSE 0 END;
      v_ok := v_count + v_cost <= v_limit;
      IF v_ok THEN v_count := v_count + v_cost; END IF;
      v_left := v_start + v_window - v_now;
      v_rem := greatest(0, v_limit - v_count);
      v_reset := CASE WHEN v_count <> 0 THEN v_left ELSE 0 END;
      v_retry := CASE WHEN v_ok THEN 0 ELSE v_left END;
      n0 := v_start; n1 := v_count; n2 := 0; v_expires := v_start + v_window;
    ELSIF v_alg = 's' THEN
      v_start := v_now - mod(v_now, v_window);
      v_count := 0; v_previous := 0;
      IF v_has AND s0 = v_start THEN
        v_count := s1; v_previous := s2;
      ELSIF v_has AND s0 = v_start - v_window THEN
        v_previous := s1;
      END IF;
      v_elapsed := v_now - v_start;
      v_left := v_window - v_elapsed;
      v_ok := v_previous * v_left + (v_count + v_cost) * v_window <= v_limit * v_window;
      IF v_ok THEN
        v_count := v_count + v_cost; v_retry := 0;
      ELSE
        v_retry := {retry}(v_limit, v_window, v_cost, v_count, v_previous, v_elapsed);
      END IF;
      v_rem := greatest(
        0, (v_limit * v_window - (v_previous * v_left + v_count * v_window)) / v_window);
      v_reset := 0;
      IF v_rem < v_limit THEN
        v_reset := {retry}(v_limit, v_window, v_rem + 1, v_count, v_previous, v_elapsed);
      END IF;
      n0 := v_start; n1 := v_count; n2 := v_previous; v_expires := v_start + 2 * v_window;
    ELSE
      v_backlog := 0;
      IF v_has THEN
        v_backlog := greatest(0, (s0 - v_now) * v_limit + s1);
      END IF;
      v_capacity := v_window * v_limit;
      v_wanted := v_backlog + v_cost * v_window;
      v_ok := v_wanted <= v_capacity;
      IF v_ok THEN
        v_backlog := v_wanted; v_retry := 0;
      ELSE
        v_retry := (v_wanted - v_capacity + v_limit - 1) / v_limit;
      END IF;
      v_rem := greatest(0, (v_capacity - v_backlog) / v_window);
      v_reset := 0;
      IF v_backlog > 0 THEN
        v_reset := (v_backlog + (v_rem + 1) * v_window - v_capacity + v_limit - 1) / v_limit;
      END IF;
      v_tat := v_now + v_backlog / v_limit;
      n0 := v_tat; n1 := mod(v_backlog, v_limit); n2 := v_now; v_expires := v_tat + 1;
    END IF;
    v_all := v_all AND v_ok;
    v_oks := v_oks || v_ok;
    v_remaining := v_remaining || v_rem;
    v_resets := v_resets || v_reset;
    v_retries := v_retries || v_retry;
    v_states := v_states || ARRAY[n0, n1, n2, v_expires];
  END LOOP;
  IF v_all THEN
    FOR i IN 1 .. v_n LOOP
      UPDATE {buckets} AS b
        SET state_0 = v_states[4 * i - 3], state_1 = v_states[4 * i - 2],
            state_2 = v_states[4 * i - 1], expires_at = v_states[4 * i]
        WHERE b.key = p_keys[i];
    END LOOP;
  END IF;
  FOR i IN 1 .. v_n LOOP
    allowed := v_oks[i]; remaining := v_remaining[i];
    reset_ms := v_resets[i]; retry_after_ms := v_retries[i];
    RETURN NEXT;
  END LOOP;
END
$body$
"""


def function_name(prefix: str) -> str:
    """The versioned name of the decision function for tables named ``<prefix>…``."""
    return f"{prefix}hit_v{VERSION}"


def _names(prefix: str, dialect: str = "postgresql") -> dict[str, object]:
    return {
        "clock": CLOCK_MS[dialect],
        "hit": function_name(prefix),
        "retry": f"{prefix}sliding_retry_v{VERSION}",
        "buckets": f"{prefix}buckets",
        "max_lead": MAX_CLOCK_LEAD_MS,
    }


def drop_ddl(prefix: str) -> list[str]:
    """``DROP FUNCTION IF EXISTS`` for both, run when the tables are dropped."""
    names = _names(prefix)
    return [
        f"DROP FUNCTION IF EXISTS {names['hit']}(text[], text[], {', '.join(['bigint[]'] * 3)}, "
        "bigint)",
        f"DROP FUNCTION IF EXISTS {names['retry']}({', '.join(['bigint'] * 6)})",
    ]


def function_ddl(prefix: str) -> list[str]:
    """``CREATE OR REPLACE FUNCTION`` statements for the decision function and its helper:
    safe to run again, and what a migration runs to install them (``op.execute``)."""
    names = _names(prefix)
    return [_RETRY.format(**names).strip(), _HIT.format(**names).strip()]


# -- MySQL / MariaDB ------------------------------------------------------------------------
#
# The same decision as a stored procedure: MySQL has no arrays, so the tiers arrive as one
# JSON array of [hex key, algorithm, limit, window, cost] and the distinct keys, sorted, as
# another (hex, so no connection character set can alter a key). It runs its own
# transaction (the store calls it in autocommit mode), so the whole decision is one CALL,
# one round trip; its answer is one row holding a JSON array of [allowed, remaining,
# reset, retry after] per tier. New states wait in a JSON array until every tier has been
# decided, so two tiers naming one bucket both see its stored state, as in Python.
# MySQL's DIV truncates like PostgreSQL's `/`; the dividends are the same non-negative ones.

_MYSQL_RETRY = """
CREATE FUNCTION {retry}(
  p_limit BIGINT, p_window BIGINT, p_cost BIGINT, p_current BIGINT, p_previous BIGINT,
  p_elapsed BIGINT
) RETURNS BIGINT DETERMINISTIC NO SQL
BEGIN
  DECLARE v_left BIGINT DEFAULT p_window - p_elapsed;
  DECLARE v_spare BIGINT DEFAULT p_limit - p_current - p_cost;
  IF v_spare >= 0 AND p_previous > 0 THEN
    RETURN GREATEST(1, p_window - (v_spare * p_window) DIV p_previous - p_elapsed);
  END IF;
  IF p_limit < p_cost THEN
    RETURN v_left + p_window;
  END IF;
  IF p_current = 0 THEN
    RETURN v_left;
  END IF;
  RETURN v_left + GREATEST(0, p_window - ((p_limit - p_cost) * p_window) DIV p_current);
END
"""

_MYSQL_HIT = """
CREATE PROCEDURE {hit}(IN p_hits LONGTEXT, IN p_keys LONGTEXT, IN p_now BIGINT)
MODIFIES SQL DATA
BEGIN
  DECLARE v_n INT DEFAULT JSON_LENGTH(p_hits);
  DECLARE i INT DEFAULT 0;
  DECLARE v_key VARBINARY(255);
  DECLARE v_at VARCHAR(32);
  DECLARE v_alg VARCHAR(1);
  DECLARE v_limit, v_window, v_cost, v_now, v_clock, s0, s1, s2, v_until, v_time BIGINT;
  DECLARE v_start, v_count, v_previous, v_elapsed, v_left, v_rem, v_reset, v_retry BIGINT;
  DECLARE v_backlog, v_capacity, v_wanted, v_tat, n0, n1, n2, v_expires BIGINT;
  DECLARE v_has, v_ok BOOLEAN;
  DECLARE v_all BOOLEAN DEFAULT TRUE;
  DECLARE v_out LONGTEXT DEFAULT '';
  DECLARE v_states LONGTEXT DEFAULT '';
  DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN ROLLBACK; RESIGNAL; END;
  START TRANSACTION;
  -- a no-op update on a duplicate still locks the row; rows are locked in key order
  WHILE i < JSON_LENGTH(p_keys) DO
    INSERT INTO {buckets} (`key`, state_0, state_1, state_2, expires_at)
      VALUES (UNHEX(JSON_UNQUOTE(JSON_EXTRACT(p_keys, CONCAT('$[', i, ']')))), 0, 0, 0, 0)
      ON DUPLICATE KEY UPDATE state_0 = state_0;
    SET i = i + 1;
  END WHILE;
  -- the database's clock unless the caller passed its own, read once the rows are locked
  SET v_clock = COALESCE(p_now, {clock});
  SET i = 0;
  WHILE i < v_n DO
    SET v_at = CONCAT('$[', i, ']');
    SET v_key = UNHEX(JSON_UNQUOTE(JSON_EXTRACT(p_hits, CONCAT(v_at, '[0]'))));
    SET v_alg = JSON_UNQUOTE(JSON_EXTRACT(p_hits, CONCAT(v_at, '[1]')));
    SET v_limit = JSON_EXTRACT(p_hits, CONCAT(v_at, '[2]'));
    SET v_window = JSON_EXTRACT(p_hits, CONCAT(v_at, '[3]'));
    SET v_cost = JSON_EXTRACT(p_hits, CONCAT(v_at, '[4]'));
    SET v_now = v_clock;
    SELECT b.state_0, b.state_1, b.state_2, b.expires_at INTO s0, s1, s2, v_until
      FROM {buckets} AS b WHERE b.`key` = v_key;
    SET v_has = v_until > v_now;
    -- algorithms._as_of: decide as of the bucket's own time when the caller's clock lags
    IF v_has THEN
      SET v_time = IF(v_alg = 'g', s2, s0);
      IF v_time > v_now THEN
        IF v_time - v_now > {max_lead} THEN
          SET v_has = FALSE;
        ELSE
          SET v_now = v_time;
        END IF;
      END IF;
    END IF;
    IF v_alg = 'f' THEN
      SET v_start = v_now - MOD(v_now, v_window);
      SET v_count = IF(v_has AND s0 = v_start, s1, 0);
      SET v_ok = v_count + v_cost <= v_limit;
      IF v_ok THEN SET v_count = v_count + v_cost; END IF;
      SET v_left = v_start + v_window - v_now;
      SET v_rem = GREATEST(0, v_limit - v_count);
      SET v_reset = IF(v_count <> 0, v_left, 0);
      SET v_retry = IF(v_ok, 0, v_left);
      SET n0 = v_start, n1 = v_count, n2 = 0, v_expires = v_start + v_window;
    ELSEIF v_alg = 's' THEN
      SET v_start = v_now - MOD(v_now, v_window);
      SET v_count = 0, v_previous = 0;
      IF v_has AND s0 = v_start THEN
        SET v_count = s1, v_previous = s2;
      ELSEIF v_has AND s0 = v_start - v_window THEN
        SET v_previous = s1;
      END IF;
      SET v_elapsed = v_now - v_start;
      SET v_left = v_window - v_elapsed;
      SET v_ok = v_previous * v_left + (v_count + v_cost) * v_window <= v_limit * v_window;
      IF v_ok THEN
        SET v_count = v_count + v_cost, v_retry = 0;
      ELSE
        SET v_retry = {retry}(v_limit, v_window, v_cost, v_count, v_previous, v_elapsed);
      END IF;
      SET v_rem = GREATEST(
        0, (v_limit * v_window - (v_previous * v_left + v_count * v_window)) DIV v_window);
      SET v_reset = 0;
      IF v_rem < v_limit THEN
        SET v_reset = {retry}(v_limit, v_window, v_rem + 1, v_count, v_previous, v_elapsed);
      END IF;
      SET n0 = v_start, n1 = v_count, n2 = v_previous, v_expires = v_start + 2 * v_window;
    ELSE
      SET v_backlog = 0;
      IF v_has THEN
        SET v_backlog = GREATEST(0, (s0 - v_now) * v_limit + s1);
      END IF;
      SET v_capacity = v_window * v_limit;
      SET v_wanted = v_backlog + v_cost * v_window;
      SET v_ok = v_wanted <= v_capacity;
      IF v_ok THEN
        SET v_backlog = v_wanted, v_retry = 0;
      ELSE
        SET v_retry = (v_wanted - v_capacity + v_limit - 1) DIV v_limit;
      END IF;
      SET v_rem = GREATEST(0, (v_capacity - v_backlog) DIV v_window);
      SET v_reset = 0;
      IF v_backlog > 0 THEN
        SET v_reset = (v_backlog + (v_rem + 1) * v_window - v_capacity + v_limit - 1) DIV v_limit;
      END IF;
      SET v_tat = v_now + v_backlog DIV v_limit;
      SET n0 = v_tat, n1 = MOD(v_backlog, v_limit), n2 = v_now, v_expires = v_tat + 1;
    END IF;
    SET v_all = v_all AND v_ok;
    SET v_out = CONCAT(v_out, IF(i = 0, '[', ','), '[', IF(v_ok, 1, 0), ',', v_rem, ',',
                       v_reset, ',', v_retry, ']');
    SET v_states = CONCAT(v_states, IF(i = 0, '[', ','), '[', n0, ',', n1, ',', n2, ',',
                          v_expires, ']');
    SET i = i + 1;
  END WHILE;
  SET v_states = CONCAT(v_states, ']');
  IF v_all THEN
    SET i = 0;
    WHILE i < v_n DO
      SET v_at = CONCAT('$[', i, ']');
      UPDATE {buckets} AS b
        SET b.state_0 = JSON_EXTRACT(v_states, CONCAT(v_at, '[0]')),
            b.state_1 = JSON_EXTRACT(v_states, CONCAT(v_at, '[1]')),
            b.state_2 = JSON_EXTRACT(v_states, CONCAT(v_at, '[2]')),
            b.expires_at = JSON_EXTRACT(v_states, CONCAT(v_at, '[3]'))
        WHERE b.`key` = UNHEX(JSON_UNQUOTE(JSON_EXTRACT(p_hits, CONCAT(v_at, '[0]'))));
      SET i = i + 1;
    END WHILE;
  END IF;
  COMMIT;
  SELECT CONCAT(v_out, ']') AS decisions;
END
"""


def mysql_ddl(prefix: str) -> list[str]:
    """``CREATE FUNCTION`` and ``CREATE PROCEDURE`` for MySQL/MariaDB's decision procedure
    (named like PostgreSQL's function). MySQL has no portable ``OR REPLACE``: installing over
    an existing one fails with error 1304, which the store treats as installed (the body of
    a version never changes)."""
    names = _names(prefix, "mysql")
    return [_MYSQL_RETRY.format(**names).strip(), _MYSQL_HIT.format(**names).strip()]


def mysql_drop_ddl(prefix: str) -> list[str]:
    """``DROP … IF EXISTS`` for both, run when the tables are dropped."""
    names = _names(prefix)
    return [f"DROP PROCEDURE IF EXISTS {names['hit']}", f"DROP FUNCTION IF EXISTS {names['retry']}"]
