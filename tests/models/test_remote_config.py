"""Config of remote aliases: each mistake names its key; a bad one exits 78."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.config import parse_toml_text
from edged.errors import ConfigError
from tests.edgedtest import cli

LOCAL = '[models.g]\npath = "/m.gguf"\n'
REMOTE = '[models.big]\nformat = "openai"\nbase_url = "http://backroom.local:8000/v1"\n' \
         'model = "qwen2.5-7b-instruct"\n'


def test_a_remote_alias_is_parsed_apart_from_the_catalog() -> None:
    cfg = parse_toml_text(LOCAL + REMOTE + 'fallback = "g"\ntimeout = "5s"\n'
                          'max_concurrent = 2\nredact = ["email"]\n')
    assert "big" not in cfg.models.catalog
    big = cfg.models.remote["big"]
    assert big.base_url == "http://backroom.local:8000/v1" and big.model == "qwen2.5-7b-instruct"
    assert big.timeout == 5.0 and big.max_concurrent == 2 and big.fallback == "g"
    assert big.redact == ("email",) and big.breaker_failures == 3 and big.breaker_open == 30.0


def test_redaction_is_on_by_default() -> None:
    assert parse_toml_text(REMOTE).models.remote["big"].redact == ("phone", "email", "card")


@pytest.mark.parametrize(("extra", "message"), [
    ('fallback = "nope"\n', "models.big.fallback: 'nope' is not a model alias"),
    ('fallback = "big"\n', "models.big.fallback: 'big' is a remote alias"),
    ('timeout = "0s"\n', "models.big.timeout: must be above 0"),
    ('redact = ["ssn"]\n', "models.big.redact: unknown pattern 'ssn'"),
    ('redact_patterns = ["("]\n', "models.big.redact_patterns[0]: not a regular expression"),
    ('redact_patterns = ["a*"]\n', "models.big.redact_patterns[0]: 'a*' matches the empty"),
    ('ca_file = "/nonexistent.pem"\n', "models.big.ca_file: /nonexistent.pem is not a file"),
    ('max_concurrent = 0\n', "models.big.max_concurrent"),
    ('path = "/m.gguf"\n', "models.big.path: unknown key"),
])
def test_a_bad_remote_key_is_named(extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_toml_text(LOCAL + REMOTE + extra)
    assert message in caught.value.message


def test_a_bad_url_is_named() -> None:
    with pytest.raises(ConfigError, match=r"models.big.base_url: 'ftp://x/v1' is not an http"):
        parse_toml_text(REMOTE.replace("http://backroom.local:8000/v1", "ftp://x/v1"))


def test_a_key_file_readable_by_others_exits_78(tmp_path: Path) -> None:
    key = tmp_path / "big.key"
    key.write_text("sk-1\n")
    key.chmod(0o644)
    config = tmp_path / "edged.toml"
    config.write_text(REMOTE + f'api_key_file = "{key}"\n')
    result = cli("serve", "--config", str(config), "--state-dir", str(tmp_path / "st"))
    assert result.returncode == 78, result.stderr
    assert "models.big.api_key_file" in result.stderr and "chmod 600" in result.stderr
    key.chmod(0o600)
    assert parse_toml_text(config.read_text()).models.remote["big"].api_key_file == key
