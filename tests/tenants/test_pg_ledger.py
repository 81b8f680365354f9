"""The ledger against a real PostgreSQL: migrations, batches, positions across crashes,
an outage, the audit trail."""

from __future__ import annotations

import logging
import threading

import psycopg
import pytest
import requests

from basic_inference_server.audit import AuditLog
from basic_inference_server.ledger.journal import Journal, journal_dir, segments
from basic_inference_server.ledger.postgres import PgLedger, SchemaTooNew, migrate, migrations
from basic_inference_server.ledger.shipper import AUDIT_SOURCE, Shipper, gateway_id
from tests.conftest import wait_until
from tests.tenants.conftest import make_key, ready


def usage(dsn: str) -> dict[tuple[str, str], tuple[int, int, int, float]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tenant, endpoint, sum(requests), sum(ok), sum(errors), "
                            "sum(units) FROM bis_usage GROUP BY tenant, endpoint").fetchall()
    return {(t, e): (int(n), int(ok), int(err), float(u)) for t, e, n, ok, err, u in rows}


def sources(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT source, shipped FROM bis_ledger_sources").fetchall())


def test_migrations_are_applied_once_in_order_and_a_newer_schema_is_refused(pg_dsn) -> None:
    applied: list[list[str]] = []

    def start() -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            applied.append(migrate(conn))

    # Two gateways starting together: the advisory lock lets one apply them.
    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    names = [name for _, name, _ in migrations()]
    assert sorted(applied, key=len) == [[], names]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT version, name FROM bis_schema_migrations ORDER BY 1").fetchall()
        assert rows == [(v, n) for v, n, _ in migrations()]
        assert migrate(conn) == []
        conn.execute("INSERT INTO bis_schema_migrations (version, name) VALUES (99, 'x.sql')")
        with pytest.raises(SchemaTooNew, match="schema version 99"):
            migrate(conn)


def test_the_journal_is_shipped_summed_and_deleted_once_its_writer_is_done(pg_dsn,
                                                                         tmp_path) -> None:
    front = Journal(journal_dir(tmp_path))
    for status, units in ((200, 2.0), (200, 3.0), (429, 0.0)):
        front.record("acme", "echo", status, units, 0.01)
    front.record("globex", "echo", 200, 1.0, 0.01)
    shipper = Shipper(pg_dsn, tmp_path)
    assert shipper.run_once() == 2
    assert usage(pg_dsn) == {("acme", "echo"): (3, 2, 1, 5.0), ("globex", "echo"): (1, 1, 0, 1.0)}
    [seg] = segments(journal_dir(tmp_path))
    assert sources(pg_dsn) == {seg.name: seg.stat().st_size}
    # Nothing new: nothing written. More: added to the day's row.
    assert shipper.run_once() == 0
    front.record("acme", "echo", 200, 1.0, 0.01)
    shipper.run_once()
    assert usage(pg_dsn)[("acme", "echo")] == (4, 3, 1, 6.0)
    assert seg.exists()  # its writer may add more
    front.close()
    shipper.run_once()
    shipper.close()
    assert not seg.exists() and sources(pg_dsn) == {}
    assert usage(pg_dsn)[("acme", "echo")] == (4, 3, 1, 6.0)


def test_a_shipper_started_anew_goes_on_from_the_positions_in_postgres(pg_dsn, tmp_path) -> None:
    """A manager killed at any point and started again on its cache folder counts each
    entry once: the positions are committed with the rows they cover."""
    front = Journal(journal_dir(tmp_path))
    for _ in range(5):
        front.record("acme", "echo", 200, 1.0, 0.01)
    first = Shipper(pg_dsn, tmp_path)
    first.run_once()
    first.close()
    # The first shipper is gone (its local positions with it); a new one reads them.
    again = Shipper(pg_dsn, tmp_path)
    assert again.gateway == first.gateway == gateway_id(tmp_path)
    assert again.run_once() == 0
    for _ in range(3):
        front.record("acme", "echo", 200, 1.0, 0.01)
    again.run_once()
    assert usage(pg_dsn) == {("acme", "echo"): (8, 8, 0, 8.0)}
    # A batch whose transaction failed adds nothing, and is shipped whole at the next try.
    front.record("acme", "echo", 200, 1.0, 0.01)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE bis_ledger_sources ADD CONSTRAINT small CHECK (shipped < 0) "
                      "NOT VALID")
        with pytest.raises(psycopg.errors.CheckViolation):
            again.run_once()
        assert usage(pg_dsn) == {("acme", "echo"): (8, 8, 0, 8.0)}
        conn.execute("ALTER TABLE bis_ledger_sources DROP CONSTRAINT small")
    again.close()  # what a round does after a failure
    again.run_once()
    assert usage(pg_dsn) == {("acme", "echo"): (9, 9, 0, 9.0)}
    again.close()
    front.close()


def test_an_outage_keeps_the_usage_in_the_journal_until_postgres_answers(pg_dsn, tmp_path,
                                                                        caplog) -> None:
    caplog.set_level(logging.INFO, logger="basic_inference_server.ledger")
    front = Journal(journal_dir(tmp_path))
    shipper = Shipper(pg_dsn, tmp_path, every=0.05)
    shipper.start()
    try:
        front.record("acme", "echo", 200, 1.0, 0.01)
        wait_for(lambda: usage(pg_dsn).get(("acme", "echo"), (0,))[0] == 1)
        name = pg_dsn.rsplit("/", 1)[1]
        with psycopg.connect(pg_dsn.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            for _ in range(50):
                front.record("acme", "echo", 200, 1.0, 0.01)
            wait_for(lambda: "cannot ship to PostgreSQL" in caplog.text)
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        wait_for(lambda: usage(pg_dsn)[("acme", "echo")][0] == 51)
        assert "shipping to PostgreSQL again" in caplog.text
        assert caplog.text.count("cannot ship to PostgreSQL") == 1  # logged once an outage
    finally:
        front.close()
        shipper.stop(10)
    assert usage(pg_dsn) == {("acme", "echo"): (51, 51, 0, 51.0)}
    assert segments(journal_dir(tmp_path)) == []


def test_the_audit_trail_is_shipped_once_and_again_after_a_rotation(pg_dsn, tmp_path) -> None:
    audit = AuditLog(tmp_path)
    who = {"credential": "admin_token", "token_id": "abc", "address": "127.0.0.1"}
    for path in ("/keys", "/update_workers"):
        audit.admin_call(who, "POST", path, {"TOKEN": "s3cret"}, 200, None, None)  # type: ignore[arg-type]
    shipper = Shipper(pg_dsn, tmp_path)
    shipper.run_once()
    shipper.run_once()
    shipper.close()
    (tmp_path / "audit.jsonl").write_bytes(b"")  # logrotate's copytruncate
    audit.admin_call(who, "POST", "/reload_server", {}, 500, "internal", None)  # type: ignore[arg-type]
    again = Shipper(pg_dsn, tmp_path)
    again.run_once()
    again.close()
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT kind, record->>'path', record->'args'->>'TOKEN' "
                            "FROM bis_audit ORDER BY id").fetchall()
    assert [r[1] for r in rows] == ["/keys", "/update_workers", "/reload_server"]
    assert rows[0][0] == "admin_call" and rows[0][2] != "s3cret"
    assert sources(pg_dsn)[AUDIT_SOURCE] == (tmp_path / "audit.jsonl").stat().st_size


def test_the_ledger_connection_needs_no_superuser_once_migrated(pg_dsn) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(conn)
        conn.execute("CREATE ROLE bis_writer LOGIN")
        conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public "
                     "TO bis_writer")
        conn.execute("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO bis_writer")
    try:
        writer = PgLedger(pg_dsn.replace("postgres@", "bis_writer@"), "gw1")
        assert writer.shipped() == {}
        writer.close()
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("DROP OWNED BY bis_writer")
            conn.execute("DROP ROLE bis_writer")


def wait_for(predicate, timeout: float = 30.0) -> None:
    wait_until(predicate, timeout=timeout, interval=0.05, ignore=(psycopg.Error, KeyError))


def test_a_jobs_record_lives_in_postgres_and_its_run_reaches_the_ledger(gateways, pg_dsn) -> None:
    gw = ready(gateways({"API_KEYS": True, "LEDGER_POSTGRES": pg_dsn, "RESULTS": pg_dsn,
                         "CONFIG_ENDPOINTS": {"echo": {"SERVER_CLASS": "echo"}}}))
    key = make_key(gw, TENANT="acme")["KEY"]
    auth = {"Authorization": f"Bearer {key}"}
    resp = requests.post(gw.url("/run"), json={"SIGNATURE": "echo", "ASYNC": True, "x": 1},
                         headers=auth, timeout=30)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["JOB_ID"]
    done = wait_until(lambda: (r := requests.get(gw.url(f"/jobs/{job_id}"), headers=auth,
                                                 timeout=30).json())["STATUS"] == "done" and r,
                      timeout=60)
    assert done["RESULT"]["echo"]["x"] == 1
    with psycopg.connect(pg_dsn) as conn:
        status, record = conn.execute("SELECT status, record FROM bis_job_results WHERE id = %s",
                                      (job_id,)).fetchone()
    assert status == "done" and record["RESULT"] == done["RESULT"]
    # The job's run is metered where it ran (the endpoint worker's journal); its
    # submission (202) is not.
    wait_for(lambda: usage(pg_dsn) == {("acme", "echo"): (1, 1, 0, 0.0)})


def test_metrics_and_system_status_show_a_ledger_falling_behind_and_catching_up(
        gateways, pg_dsn) -> None:
    server, name = pg_dsn.rsplit("/", 1)

    def allow(on: bool) -> None:
        with psycopg.connect(server + "/postgres", autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS {str(on).lower()}")

    def gauges() -> dict[str, float]:
        text = gw.get("/metrics").text
        return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                if line.startswith("bis_ledger_")}

    allow(False)  # from its start: the gateway serves, and journals
    gw = ready(gateways({"API_KEYS": True, "LEDGER_POSTGRES": pg_dsn,
                         "CONFIG_ENDPOINTS": {"echo": {"SERVER_CLASS": "echo"}}}))
    key = make_key(gw, TENANT="acme")["KEY"]
    for _ in range(5):
        assert requests.post(gw.url("/run"), json={"SIGNATURE": "echo"}, timeout=30,
                             headers={"Authorization": f"Bearer {key}"}).status_code == 200
    behind = wait_until(lambda: (g := gauges()).get("bis_ledger_up") == 0
                        and g["bis_ledger_unshipped_bytes"] > 0 and g, timeout=30)
    assert "bis_ledger_shipped_timestamp_seconds" not in behind  # never shipped yet
    status = wait_until(lambda: gw.get("/system_status").json(), timeout=30)["LEDGER"]
    assert status["up"] is False and "not currently accepting connections" in status["error"]
    allow(True)
    caught_up = wait_until(lambda: (g := gauges()).get("bis_ledger_up") == 1
                           and g["bis_ledger_unshipped_bytes"] == 0 and g, timeout=30)
    assert caught_up["bis_ledger_shipped_timestamp_seconds"] > 0
    wait_for(lambda: usage(pg_dsn) == {("acme", "echo"): (5, 5, 0, 0.0)})
