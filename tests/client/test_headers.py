"""Which credential goes with which call, and that none shows in a repr."""

from __future__ import annotations

from basic_inference_server.client import Client, resolve
from basic_inference_server.client.flows import Call

DATA, ADMIN = Call("POST", "/run"), Call("POST", "/update_workers", admin=True)


def headers(client: Client, call: Call) -> dict[str, str]:
    return dict(client._request_args(call)["headers"])


def test_admin_token_only_goes_everywhere():
    with Client("http://gw:5002", admin_token="tok") as bis:
        assert headers(bis, DATA)["Authorization"] == "Bearer tok"
        assert headers(bis, ADMIN)["Authorization"] == "Bearer tok"
        assert "tok" not in repr(bis)


def test_an_api_key_takes_the_data_path_and_the_token_stays_on_management():
    with Client("http://gw:5002", admin_token="tok", api_key="key") as bis:
        assert headers(bis, DATA) == {"Accept": "application/json", "X-API-Key": "key"}
        assert headers(bis, ADMIN) == {"Accept": "application/json", "Authorization": "Bearer tok"}


def test_credentials_resolve_from_env_and_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    token_file = tmp_path / "tok"
    token_file.write_text("from-file\n")
    env = {"BIS_URL": "http://x:1", "BIS_ADMIN_TOKEN_FILE": str(token_file), "BIS_API_KEY": "k"}
    creds = resolve(env=env)
    assert (creds.url, creds.admin_token, creds.api_key) == ("http://x:1", "from-file", "k")
    assert "from-file" not in repr(creds)
    assert resolve(env={**env, "BIS_ADMIN_TOKEN": "from-env"}).admin_token == "from-env"
    assert resolve(token_file=str(token_file), env={"BIS_ADMIN_TOKEN": "e"}).admin_token == "from-file"
    assert resolve(env={}).admin_token is None
