"""The broker's TOML config file: settings with their precedence, and mistakes refused at start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from broker.cli import parse_settings

from .access_support import family_config, password_hash


def run_broker(
    *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess:
    """`python -m broker ARGS` for a start that is expected to fail fast."""
    return subprocess.run(
        [sys.executable, "-m", "broker", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_flag_then_environment_then_file_then_default(tmp_path, monkeypatch):
    """A setting in the file counts unless the environment or a flag says otherwise."""
    config = tmp_path / "broker.toml"
    config.write_text('host = "127.0.0.2"\nport = 9003\nheartbeat = "30s"\nmax_cameras = 12\ndemo = true\n')
    monkeypatch.setenv("FRAMEBROKER_CONFIG", str(config))
    monkeypatch.setenv("FRAMEBROKER_PORT", "9004")
    settings = parse_settings(["--max-cameras", "13"])
    assert settings.host == "127.0.0.2"  # file
    assert settings.port == 9004  # environment over file
    assert settings.max_cameras == 13  # flag over file
    assert settings.heartbeat == 30.0  # durations take units
    assert settings.demo is True
    assert settings.offline_after == 5.0  # default
    monkeypatch.delenv("FRAMEBROKER_CONFIG")
    assert parse_settings(["--config", str(config)]).port == 9004


BAD_CONFIGS = [
    ("port = ", "not valid TOML"),
    ("hots = 'x'", "unknown key 'hots'"),
    ("port = 'eighty'", "port='eighty' is invalid"),
    ("secret = 'abc'", "unknown key 'secret' (it can only be given as a flag or variable)"),
    ('[[camera]]\nid = "a"\n[[camera]]\nid = "a"', "camera[2] (a): id: duplicate camera 'a'"),
    (
        '[[user]]\nname = "alice"\npassword_hash = "{alice}"\n' * 2,
        "user[2] (alice): name: duplicate user 'alice'",
    ),
    ('[[camera]]\nid = "garden"\nviewers = ["zed"]', "camera[1] (garden): viewers: unknown user 'zed'"),
    (
        '[[camera]]\nid = "garden"\nviewers = ["@friends"]',
        "camera[1] (garden): viewers: no user is in group 'friends'",
    ),
    (
        '[[user]]\nname = "alice"\npassword_hash = "md5$abc"',
        "user[1] (alice): password_hash: not a password hash",
    ),
    ('[[user]]\nname = "alice"', "user[1] (alice): password_hash: missing"),
    ('[[camera]]\nid = "garden"\nviewer = ["x"]', "camera[1] (garden): unknown key 'viewer'"),
    ('[[camera]]\nid = "bad id"', "camera[1] (bad id): id: use 1-64 characters"),
    ('[[camera]]\nid = "g"\npublic = true\nviewers = ["*"]', "camera[1] (g): viewers: a public camera"),
    (
        '[[camera]]\nid = "g"\npublish_token_file = "missing.txt"',
        "camera[1] (g): publish_token_file: cannot read",
    ),
    ("max_cameras = -5", "max_cameras=-5 is invalid: expected >= 1"),
    ("workers = 2", "workers=2 needs --redis"),
    ('redis = "redis://127.0.0.1:1/zero"', "redis='redis://127.0.0.1:1/zero' is invalid"),
    ('redis = "redis://127.0.0.1:1/0?protocol=3"', "protocol=3 is not supported"),
    (
        'redis = "redis://127.0.0.1:1/0"\nredis_password_file = "/nonexistent/pw"',
        "redis_password_file='/nonexistent/pw': cannot read it",
    ),
    ('trusted_proxies = ["10.0.0.0/33"]', "trusted_proxies: '10.0.0.0/33' is invalid"),
    ('secret_file = "/nonexistent/secret.key"', "secret_file: cannot read /nonexistent/secret.key"),
    (
        'tls_cert = "/nonexistent/cert.pem"\ntls_key = "/nonexistent/key.pem"',
        "tls_cert='/nonexistent/cert.pem'",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
def test_a_bad_config_file_stops_the_broker_with_one_line(tmp_path, text, message):
    """Exit 2 with one line naming the file, the entry and the key; no traceback."""
    config = tmp_path / "broker.toml"
    config.write_text(text.replace("{alice}", password_hash("alice")))
    result = run_broker("--config", str(config), env={"FRAMEBROKER_STATE_DIR": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(config) in lines[0] and message in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_a_bad_value_from_a_flag_or_variable_names_the_setting_not_the_file(tmp_path):
    """A config file that is fine, and a bad value from a variable or a flag: the line names the setting
    as given there, and not the file, which has nothing to fix."""
    config = tmp_path / "broker.toml"
    config.write_text("max_cameras = 12\n")
    env = {"FRAMEBROKER_STATE_DIR": str(tmp_path), "FRAMEBROKER_MAX_CAMERAS": "-5"}
    from_variable = run_broker("--config", str(config), env=env)
    from_flag = run_broker("--config", str(config), "--secret-file", "/nonexistent/secret.key", env=env | {
        "FRAMEBROKER_MAX_CAMERAS": "12"
    })  # fmt: skip
    assert (from_variable.returncode, from_flag.returncode) == (2, 2)
    assert from_variable.stderr.splitlines() == [
        "framebroker: error: max_cameras=-5 is invalid: expected >= 1"
    ]
    assert from_flag.stderr.splitlines() == [
        "framebroker: error: secret_file: cannot read /nonexistent/secret.key: No such file or directory"
    ]


def test_a_missing_config_file_is_named(tmp_path):
    result = run_broker("--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "nope.toml: cannot read the config file" in result.stderr


def test_a_config_file_that_is_not_utf8_is_named_in_one_line(tmp_path):
    """A file saved in Latin-1 (or not text at all): exit 2, one line naming the file, no traceback."""
    config = tmp_path / "broker.toml"
    config.write_bytes(b'host = "\xff"\n')
    result = run_broker("--config", str(config), env={"FRAMEBROKER_STATE_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"framebroker: error: {config}: not valid TOML: not UTF-8 text (byte 0xff at offset 8)"
    ]


def test_a_broker_open_to_the_network_needs_accounts_or_public(tmp_path):
    """Off loopback with no viewer access configured, the broker refuses to start and says what to do."""
    result = run_broker("--host", "0.0.0.0", env={"FRAMEBROKER_STATE_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "hash-password" in result.stderr and "--public" in result.stderr and "[[user]]" in result.stderr


def test_a_publish_token_file_is_read_relative_to_the_config(tmp_path):
    """`publish_token_file` next to the config file; the broker starts (then is stopped) with it."""
    (tmp_path / "garden.token").write_text("from-a-file-token\n")
    config = family_config(tmp_path)
    config.write_text(config.read_text() + '\n[[camera]]\nid = "shed"\npublish_token_file = "garden.token"\n')
    from broker.configfile import read_access

    _, cameras = read_access(config)
    assert {rule.id: rule.publish_token for rule in cameras}["shed"] == "from-a-file-token"


def test_example_config_in_readme_is_valid(tmp_path):
    """README's example config file parses (with a real hash in place of the placeholder)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("```toml\n# broker.toml")
    example = readme[start + len("```toml\n") : readme.index("```", start + 7)]
    example = example.replace("scrypt$ln=15,r=8,p=1$...", password_hash("alice"))
    (tmp_path / "garden.token").write_text("a-token\n")
    config = tmp_path / "broker.toml"
    config.write_text(example.replace("/etc/framebroker/garden.token", str(tmp_path / "garden.token")))
    from broker.configfile import read_access, read_settings

    read_settings(config)
    users, cameras = read_access(config)
    assert users and cameras


def test_readme_lists_every_setting_with_its_variable():
    """README's settings table has a row for every flag of `framebroker --help`."""
    import dataclasses

    from broker.config import Settings, env_name

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("## Broker configuration") :]
    for f in dataclasses.fields(Settings):
        if f.metadata.get("flag", True):
            row = f"| `--{f.name.replace('_', '-')}`"
            assert row in table, f"README's settings table has no row for --{f.name.replace('_', '-')}"
            assert f"`{env_name(f.name)}`" in table
