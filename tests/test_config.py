"""Config: the daemon and logging sections, the shipped default, and exit 78 for bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.config import Overrides, load_config, parse_toml_text
from edged.errors import ConfigError
from tests.edgedtest import REPO, cli

EX_CONFIG = 78


def test_the_shipped_dev_config_is_valid_and_points_under_var() -> None:
    cfg = load_config(REPO / "config" / "edged.toml")
    assert cfg.daemon.state_dir == REPO / "var"
    assert cfg.daemon.socket == REPO / "var" / "edged.sock"
    assert cfg.daemon.keys_dir == REPO / "var" / "keys"
    assert cfg.daemon.socket_mode == 0o660
    assert cfg.daemon.max_body_bytes == 1024 * 1024
    assert cfg.daemon.grace_period == 20.0
    assert cfg.logging.format == "auto"


def test_defaults_are_the_packaged_paths() -> None:
    cfg = parse_toml_text("")
    assert cfg.daemon.state_dir == Path("/var/lib/edged")
    assert cfg.daemon.keys_dir == Path("/var/lib/edged/keys")
    assert cfg.daemon.admin_groups == ("edged-admin",)
    assert cfg.daemon.client_groups == ("edged",)


def test_overrides_win_and_keys_follow_the_state_dir(tmp_path: Path) -> None:
    cfg = parse_toml_text('[daemon]\nstate_dir = "/srv/a"\nsocket = "/srv/a/s.sock"\n',
                          source=tmp_path / "c.toml",
                          overrides=Overrides(state_dir=Path("/srv/b"), socket=Path("/srv/s")))
    assert (cfg.daemon.state_dir, cfg.daemon.socket) == (Path("/srv/b"), Path("/srv/s"))
    assert cfg.daemon.keys_dir == Path("/srv/b/keys")


def test_an_explicit_keys_dir_survives_a_state_dir_override() -> None:
    cfg = parse_toml_text('[daemon]\nkeys_dir = "/etc/edged/keys"\n',
                          overrides=Overrides(state_dir=Path("/srv/b")))
    assert cfg.daemon.keys_dir == Path("/etc/edged/keys")


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    cfg = parse_toml_text('[daemon]\nstate_dir = "../state"\n', source=tmp_path / "etc" / "c.toml")
    assert cfg.daemon.state_dir == tmp_path / "state"


def test_sizes_and_durations_take_units() -> None:
    cfg = parse_toml_text('[daemon]\nmax_body = "2MiB"\ngrace_period = "1m"\n')
    assert (cfg.daemon.max_body_bytes, cfg.daemon.grace_period) == (2 * 1024 * 1024, 60.0)


LONG = "/tmp/" + "x" * 110 + ".sock"


@pytest.mark.parametrize(("text", "message"), [
    ("[daemon]\ncolour = 1\n", "daemon.colour: unknown key"),
    ("[nonsense]\n", "nonsense: unknown key"),
    ('[daemon]\nmax_body = "12XB"\n', "daemon.max_body: '12XB' is not a size"),
    ("[daemon]\nmax_body = 10\n", "daemon.max_body: 10 bytes is too small"),
    ('[daemon]\ngrace_period = "soon"\n', "daemon.grace_period: 'soon' is not a duration"),
    ("[daemon]\ngrace_period = true\n", "daemon.grace_period: True is not a duration"),
    ("[daemon]\nsocket_mode = 660\n", "daemon.socket_mode: expected a string, got 660"),
    ('[daemon]\nsocket_mode = "0999"\n', "daemon.socket_mode: '0999' is not an octal mode"),
    ('[daemon]\nsocket_mode = "7777"\n', "daemon.socket_mode: '7777' is not a permission mode"),
    ('[daemon]\nadmin_groups = "wheel"\n', "daemon.admin_groups: expected a list of strings"),
    ('[daemon]\ndevice_id = " "\n', "daemon.device_id: must not be empty"),
    ("daemon = 3\n", "daemon: expected a table, got 3"),
    ('[logging]\nlevel = "loud"\n', "logging.level: 'loud' is not one of debug, info"),
    ('[logging]\nformat = "xml"\n', "logging.format: 'xml' is not one of auto, text"),
    (f'[daemon]\nsocket = "{LONG}"\n', "daemon.socket: " + repr(LONG)),
    ("[daemon\n", "not valid TOML"),
    ("[daemon]\ngrace_period = nan\n", "daemon.grace_period: nan is not a duration"),
    ("[daemon]\ngrace_period = inf\n", "daemon.grace_period: inf is not a duration"),
    ("[daemon]\nread_timeout = nan\n", "daemon.read_timeout: nan is not a duration"),
    ('[daemon]\nread_timeout = "0s"\n', "daemon.read_timeout: must be more than 0 seconds"),
    ("[daemon]\nidle_timeout = -1\n", "daemon.idle_timeout"),
    ("[daemon]\nmax_connections = 2\n", "daemon.max_connections"),
    ('[sync]\nmax_bytes = "1KiB"\nreserved_bytes = "1KiB"\n', "sync.reserved_bytes: 1024 bytes"),
    ("[agents.a]\nmodel = 'x'\nroute_threshold = nan\n",
     "agents.a.route_threshold: nan is not a finite number"),
])
def test_a_bad_value_names_its_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_toml_text(text)
    assert message in caught.value.message


def test_a_config_that_is_not_utf8_or_missing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(("text", "key"), [
    ("[daemon]\ncolour = 1\n", "daemon.colour: unknown key"),
    ('[daemon]\nmax_body = "12XB"\n', "daemon.max_body"),
    ("[daemon]\ngrace_period = [1]\n", "daemon.grace_period"),
    ("[daemon\n", "not valid TOML"),
    (f'[daemon]\nsocket = "{LONG}"\n', "longer than the 107 bytes"),
])
def test_serve_exits_78_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    config = tmp_path / "edged.toml"
    config.write_text(text)
    result = cli("serve", "--config", str(config), "--state-dir", str(tmp_path / "st"))
    assert result.returncode == EX_CONFIG, result.stderr
    assert result.stderr.startswith("edged: invalid config: ")
    assert key in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, "one line, no traceback"
    assert not (tmp_path / "st").exists(), "nothing may be touched before the config is valid"


def test_a_copied_config_whose_data_is_unreachable_fails_before_any_state(
        tmp_path: Path) -> None:
    # The dev config copied elsewhere: its relative agent data paths no longer resolve.
    copy = tmp_path / "cfg" / "edged.toml"
    copy.parent.mkdir()
    copy.write_text((REPO / "config" / "edged.toml").read_text())
    result = cli("serve", "--config", str(copy))
    assert result.returncode == EX_CONFIG
    assert "agents.data_dir" in result.stderr and "is not a folder" in result.stderr
    assert not (tmp_path / "var").exists()  # no database, no keys made in a surprise place
