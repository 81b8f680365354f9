"""Row 4: secrets stay off command lines, out of logs and out of endpoint code.

A gateway runs with an admin token in its environment, a RabbitMQ queue URL with a
password and a support process. Then: no /proc/*/cmdline of the tree holds the token
or the password, no endpoint worker or support process inherits BIS_ADMIN_TOKEN, and no
log line shows the password. URLs can come from the environment or a file, and the
TLS schemes (rediss://, amqps://) give TLS connections.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pika
import psutil
import pytest
import redis

from basic_inference_server.config import parse_config
from basic_inference_server.errors import ConfigError
from basic_inference_server.models.redis_state import RedisState
from basic_inference_server.queues import Job, open_queue
from basic_inference_server.queues.redis import RedisQueue
from basic_inference_server.server.standalone import build_parser, build_spec, read_config
from tests.conftest import assert_ok, free_port, gateway_env, wait_until

TOKEN = "tok-" + uuid.uuid4().hex
PASSWORD = "guest"


def cmdline(p: psutil.Process) -> str:
    try:
        return "\0".join(p.cmdline())
    except psutil.Error:
        return ""


def test_no_secret_on_any_command_line_in_any_log_or_in_endpoint_code(amqp_url, gateways, tmp_path):
    prefix = f"bissec{uuid.uuid4().hex[:8]}"
    url_file = tmp_path / "queue_url"
    url_file.write_text(f"{amqp_url}?prefix={prefix}\n")
    gw = gateways({"QUEUE": f"file:{url_file}", "RESULTS": "sqlite",
                   "HEALTH_SAMPLE_INTERVAL": 0.5,
                   "CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 2},
                                        "support_process": {"HOST": "NO_HOST",
                                                            "PING_INTERVAL": 0.5}}},
                  env=gateway_env(BIS_ADMIN_TOKEN=TOKEN))
    try:
        wait_until(lambda: "consuming jobs" in gw.log_text(), timeout=30,
                   message="a worker consumes jobs")
        assert_ok(gw.run("echo", A=1))
        tree = gw.tree()
        assert len(tree) >= 6, [cmdline(p) for p in tree]
        for p in tree:
            line = cmdline(p)
            assert TOKEN not in line, line
            assert f"guest:{PASSWORD}@" not in line, line
        workers = gw.server("echo")["worker_pids"]
        support = gw.server("support_process")["pid"]
        assert workers and support
        for pid in [*workers, gw.server("echo")["pid"], support]:
            env = psutil.Process(pid).environ()
            assert "BIS_ADMIN_TOKEN" not in env and TOKEN not in env.values(), pid
        log = gw.log_text()
        assert f"guest:{PASSWORD}@" not in log
        assert "guest:***@" in log
        assert TOKEN not in log
    finally:
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = conn.channel()
        for suffix in ("", ".retry", ".dead"):
            channel.queue_delete(f"{prefix}.echo{suffix}")
        channel.exchange_delete(f"{prefix}.dlx")
        conn.close()


def test_urls_from_the_environment_or_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BIS_TEST_QUEUE_URL", "redis://:pw@10.0.0.1:6379/0")
    (tmp_path / "results").write_text("redis://:pw2@10.0.0.2:6379/0\n")
    cfg = parse_config({"QUEUE": "env:BIS_TEST_QUEUE_URL", "RESULTS": f"file:{tmp_path / 'results'}",
                        "CONFIG_ENDPOINTS": {"e": {"MODEL_STATE_URL": "env:BIS_TEST_QUEUE_URL"}}})
    assert cfg["QUEUE"] == "redis://:pw@10.0.0.1:6379/0"
    assert cfg["RESULTS"] == "redis://:pw2@10.0.0.2:6379/0"
    assert cfg.endpoints["e"].settings["MODEL_STATE_URL"] == "redis://:pw@10.0.0.1:6379/0"
    with pytest.raises(ConfigError, match="QUEUE.*BIS_TEST_NOT_SET"):
        parse_config({"QUEUE": "env:BIS_TEST_NOT_SET"})
    with pytest.raises(ConfigError, match="RESULTS"):
        parse_config({"RESULTS": f"file:{tmp_path / 'missing'}"})
    # The standalone server's --queue takes the same references.
    (tmp_path / "endpoints").mkdir()
    (tmp_path / "endpoints" / "echo.py").write_text("")
    args = build_parser().parse_args([
        "--endpoint", "echo", "--queue", "env:BIS_TEST_QUEUE_URL", "--config", str(tmp_path / "none"),
        "--endpoints", str(tmp_path / "endpoints"), "--cache", str(tmp_path / "cache")])
    spec = build_spec(args, read_config(args))
    shutil.rmtree(Path(spec.socket).parent, ignore_errors=True)
    assert spec.jobs is not None and spec.jobs["queue"] == "redis://:pw@10.0.0.1:6379/0"


def test_a_management_call_cannot_read_files_or_the_environment(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {}}}, env=gateway_env(BIS_ADMIN_TOKEN=TOKEN))
    for ref in ("env:BIS_ADMIN_TOKEN", "file:/etc/passwd"):
        resp = gw.post("/start_server", {"SIGNATURE": "other", "SERVER_CLASS": "echo",
                                         "MODEL_STATE_URL": ref},
                       headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status_code == 400 and "configuration file only" in resp.json()["ERROR"]
    assert "other" not in gw.servers()["SERVERS"]


def test_tls_urls_give_tls_connections():
    queue = open_queue("rediss://:pw@127.0.0.1:6390/0?prefix=x&ssl_cert_reqs=required")
    assert isinstance(queue, RedisQueue)
    kwargs = queue.r.connection_pool.connection_kwargs
    assert queue.r.connection_pool.connection_class is redis.SSLConnection
    assert kwargs["ssl_cert_reqs"] == "required" and queue.prefix == "x"
    rabbit = open_queue("amqps://u:p@127.0.0.1:5671/%2F?prefix=y")
    assert rabbit.params.ssl_options is not None and rabbit.params.port == 5671  # type: ignore[attr-defined]


def _make_cert(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_a_real_tls_redis_carries_jobs(tmp_path):
    if shutil.which("redis-server") is None or shutil.which("openssl") is None:
        pytest.fail("redis-server and openssl are needed for the TLS test")
    cert, key = _make_cert(tmp_path)
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port),
                             "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                             "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        url = f"rediss://127.0.0.1:{port}/0?prefix=tlstest&ssl_ca_certs={cert}"
        queue = open_queue(url)
        wait_until(lambda: queue.r.ping(), timeout=15, ignore=(redis.ConnectionError,),
                   message="the TLS Redis answers")
        job = Job(endpoint="echo", body={"SIGNATURE": "echo", "A": 1})
        assert queue.enqueue(job)
        claim = queue.claim("echo", "c1", 1.0, 30)
        assert claim is not None and claim.job.body == job.body
        queue.ack(claim)
        queue.close()
        # The model state (MODEL_STATE_URL) takes the same rediss:// URL.
        state = RedisState(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}", prefix="tlstest")
        ref = state.acquire("m", "/models/m")
        assert state.record("m") is not None
        state.release("m", ref)
        state.close()
        # Plain text to the TLS port gets nothing: the jobs really went over TLS.
        plain = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        with pytest.raises(redis.RedisError):
            plain.ping()
    finally:
        proc.kill()
        proc.wait(timeout=10)
