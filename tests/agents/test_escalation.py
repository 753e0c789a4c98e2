"""Escalation: an agent's reply written by a bigger (here remote) model, still checked; an
agent with phi = true never uses a non-local model, refused at validation and at run time."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from edged.config import parse_config
from edged.errors import ConfigError, Forbidden
from edged.models.catalog import Catalog
from edged.models.config import ModelsConfig, parse_models
from edged.models.contract import GenerateParams
from edged.models.hybrid import HybridInference
from edged.models.manager import ModelManager
from edged.models.remotes import RemoteModels
from edged.tomlreader import Table
from tests.agents.conftest import agents_config
from tests.edgedtest import RunningDaemon, cli, dump_toml, start_daemon
from tests.models.fakeopenai import FakeOpenAI, threaded_openai

EX_CONFIG = 78


def _big(fake: FakeOpenAI) -> dict[str, Any]:
    return {"format": "openai", "base_url": fake.url("big"), "model": "big-model",
            "timeout": "5s"}


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeOpenAI, Callable[[Any], Any]]]:
    with threaded_openai() as pair:
        yield pair


@pytest.fixture(scope="module")
def daemon(module_tmp: Path, fake: tuple[FakeOpenAI, Any]) -> Iterator[RunningDaemon]:
    config = agents_config(module_tmp / "st", model=False,
                           kiosk={"escalate": "always", "escalation_model": "big"})
    # The same kiosk, escalating only what its router cannot place.
    config["agents"]["desk"] = {**config["agents"]["kiosk"], "escalate": "low_confidence"}
    config["models"]["big"] = _big(fake[0])
    d = start_daemon(config, state_dir=module_tmp / "st")
    yield d
    d.stop()


def _turn(d: RunningDaemon, message: str) -> dict[str, Any]:
    result: dict[str, Any] = d.client.post("/v1/agents/kiosk/chat", {"message": message})
    return result


def test_always_escalates_the_reply_and_keeps_a_checked_one(
        daemon: RunningDaemon, fake: tuple[FakeOpenAI, Any]) -> None:
    stand_in = fake[0]
    stand_in.modes["big"] = "facts"
    body = _turn(daemon, "Do you have the Pixel 9 in stock?")
    assert body["actions"][0]["tool"] == "check_inventory"  # the tool ran here, locally
    assert body["reply_by"] == "model"
    sent = stand_in.received["big"][-1]
    assert sent["model"] == "big-model" and "Pixel 9" in sent["messages"][0]["content"]
    # An answer that fails the check (off topic, no facts) is replaced by the template.
    stand_in.modes["big"] = "ok"
    body = _turn(daemon, "Do you have the Pixel 9 in stock?")
    assert body["reply_by"] == "template" and "Pixel 9" in body["reply"]
    assert "back room" not in body["reply"]


def test_low_confidence_escalates_only_what_the_router_cannot_place(
        daemon: RunningDaemon, fake: tuple[FakeOpenAI, Any]) -> None:
    stand_in = fake[0]
    stand_in.modes["big"] = "ok"
    before = stand_in.hits("big")
    routed = daemon.client.post("/v1/agents/desk/chat",
                                {"message": "Do you have the Pixel 9 in stock?"})
    assert routed["actions"][0]["tool"] == "check_inventory"
    assert routed["reply_by"] == "template" and stand_in.hits("big") == before
    unsure = daemon.client.post("/v1/agents/desk/chat",
                                {"message": "explain refresh rates to me"})
    assert unsure["actions"] == [] and unsure["reply_by"] == "model"
    assert unsure["reply"] == "Hello from the back room."
    assert stand_in.hits("big") == before + 1
    sent = stand_in.received["big"][-1]["messages"]
    assert sent[-1]["content"] == "explain refresh rates to me"
    # The server down and no fallback: the agent asks to rephrase, as without escalation.
    stand_in.modes["big"] = "500"
    down = daemon.client.post("/v1/agents/desk/chat",
                              {"message": "explain refresh rates to me"})
    assert down["reply_by"] == "template" and down["actions"] == []
    stand_in.modes["big"] = "ok"


def test_escalated_calls_are_audited_as_the_agent(daemon: RunningDaemon) -> None:
    out = cli("audit", "export", "--state-dir", str(daemon.state_dir), "--kind", "model.remote")
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert records and {r["actor"] for r in records} <= {"agent:kiosk", "agent:desk"}
    assert all(r["data"]["model"] == "big" for r in records)


def test_the_clinic_never_escalates_to_a_remote_model(
        daemon: RunningDaemon, fake: tuple[FakeOpenAI, Any]) -> None:
    before = fake[0].hits("big")
    daemon.client.post("/v1/agents/clinic/chat", {"message": "Is Dr. Lee free tomorrow?"})
    assert fake[0].hits("big") == before


# -- validation ------------------------------------------------------------------------------

@pytest.mark.parametrize(("agents", "key"), [
    ({"clinic": {"escalate": "always", "escalation_model": "big"}},
     "agents.clinic.escalation_model: 'big' is a remote model"),
    ({"kiosk": {"escalate": "always"}}, "agents.kiosk.escalation_model: escalate = 'always'"),
    ({"kiosk": {"escalate": "sometimes"}}, "agents.kiosk.escalate"),
    ({"kiosk": {"escalate": "always", "escalation_model": "nope"}},
     "agents.kiosk.escalation_model: 'nope' is not a model alias"),
    ({"kiosk": {"model": "big"}}, "agents.kiosk.model: 'big' is a remote model"),
    ({"encoder": "big"}, "agents.encoder: 'big' is a remote model"),
])
def test_a_config_that_would_send_phi_or_is_wrong_is_refused(
        tmp_path: Path, agents: dict[str, Any], key: str) -> None:
    config = agents_config(tmp_path / "st", model=False, **agents)
    config["models"]["big"] = {"format": "openai", "base_url": "http://10.0.0.9:8000/v1",
                               "model": "m"}
    with pytest.raises(ConfigError) as caught:
        parse_config(config)
    assert key in caught.value.message


def test_serve_exits_78_naming_the_key(tmp_path: Path) -> None:
    config = agents_config(tmp_path / "st", model=False,
                           clinic={"escalate": "always", "escalation_model": "big"})
    config["models"]["big"] = {"format": "openai", "base_url": "http://10.0.0.9:8000/v1",
                               "model": "m"}
    path = tmp_path / "edged.toml"
    path.write_text(dump_toml(config))
    result = cli("serve", "--config", str(path))
    assert result.returncode == EX_CONFIG, result.stderr
    assert "agents.clinic.escalation_model" in result.stderr
    assert not (tmp_path / "st").exists()


def test_a_local_escalation_model_is_fine_for_phi(tmp_path: Path) -> None:
    config = agents_config(tmp_path / "st", model=False,
                           clinic={"escalate": "always", "escalation_model": "gemma3-270m"})
    assert parse_config(config).agents.agents["clinic"].escalation_model == "gemma3-270m"


# -- the run-time check, below any config ------------------------------------------------------

def _models(fake: FakeOpenAI, tmp: Path) -> ModelsConfig:
    return parse_models(Table({"models": {"big": _big(fake)}}), tmp)


async def test_phi_requests_are_refused_where_they_would_leave(tmp_path: Path) -> None:
    stand_in = FakeOpenAI()
    await stand_in.start()
    registry = CollectorRegistry()
    try:
        cfg = _models(stand_in, tmp_path)
        remotes = RemoteModels(cfg.remote, registry=registry)
        manager = ModelManager(cfg, catalog=Catalog(cfg), backends={}, registry=registry,
                               budget_bytes=1 << 30)
        hybrid = HybridInference(manager, remotes)
        ask = [{"role": "user", "content": "My date of birth is 1980-02-03"}]
        with pytest.raises(Forbidden) as caught:
            await hybrid.chat("big", ask, GenerateParams(local_only=True, origin="agent:c"))
        assert caught.value.code == "phi_local_only"
        with pytest.raises(Forbidden):
            async for _piece in hybrid.stream_chat("big", ask, GenerateParams(local_only=True)):
                pass
        assert stand_in.hits("big") == 0
        gen = await hybrid.chat("big", ask, GenerateParams(max_tokens=8))
        assert gen.text == "Hello from the back room." and stand_in.hits("big") == 1
        await remotes.aclose()
    finally:
        await stand_in.stop()
