"""A kit from another package: examples/kits/pharmacy, installed with pip into a folder of
its own (not into edged's tree) and found through the ``edged.kits`` entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edged.client import ApiError
from tests.agents.conftest import MINILM
from tests.edgedtest import (
    MODEL_CACHE,
    REPO,
    RunningDaemon,
    base_config,
    bundled_alias,
    deep_merge,
    short_tmpdir,
    start_daemon,
)

KIT = REPO / "examples" / "kits" / "pharmacy"
PRESCRIPTIONS = {"1234567": {"medicine": "amoxicillin", "status": "ready"},
                 "7654321": {"medicine": "lisinopril", "status": "being_filled"}}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The kit installed as a package (its own pyproject), outside edged's source tree."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    shutil.copytree(KIT, build / "pharmacy")  # pip may write build files next to the source
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(build / "pharmacy")],
                   check=True, capture_output=True, timeout=300)
    assert (target / "edged_pharmacy").is_dir()
    return target


def pharmacy_config(state: Path, data: Path, **agent: Any) -> dict[str, Any]:
    rx = data / "prescriptions.json"
    rx.write_text(json.dumps(PRESCRIPTIONS))
    return deep_merge(base_config(state), {
        "models": {"cache_dir": str(MODEL_CACHE), "minilm": MINILM,
                   "gemma3-270m": bundled_alias(context=1024)},
        "agents": {"encoder": "minilm", "pharmacy": {
            "model": "gemma3-270m", "tools": ["check_prescription", "request_refill",
                                              "opening_hours"],
            "hours": {"monday": "09:00-18:00", "saturday": "10:00-14:00", "sunday": "closed"},
            "prescriptions_file": str(rx), **agent}}})


@pytest.fixture(scope="module")
def daemon(site: Path) -> Iterator[RunningDaemon]:
    tmp = short_tmpdir()
    d = start_daemon(pharmacy_config(tmp / "st", tmp), state_dir=tmp / "st",
                     env={"PYTHONPATH": str(site)})
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def chat(d: RunningDaemon, message: str, session: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"message": message}
    if session:
        body["session_id"] = session
    result: dict[str, Any] = d.client.post("/v1/agents/pharmacy/chat", body)
    return result


def test_the_kit_is_listed_with_its_tools(daemon: RunningDaemon) -> None:
    agents = {a["name"]: a for a in daemon.client.get("/v1/agents")["data"]}
    assert set(agents["pharmacy"]["tools"]) == {"check_prescription", "request_refill",
                                                "opening_hours"}


def test_prescription_status_from_its_data(daemon: RunningDaemon) -> None:
    turn = chat(daemon, "Is my prescription 1234567 ready to pick up?")
    assert [a["tool"] for a in turn["actions"]] == ["check_prescription"]
    assert "ready to collect" in turn["reply"]
    unknown = chat(daemon, "what's the status of prescription 5550000")
    assert "can't find prescription 5550000" in unknown["reply"]


def test_a_refill_is_a_ticket_and_asks_for_the_number_first(daemon: RunningDaemon) -> None:
    first = chat(daemon, "I need a refill of my prescription")
    assert first["actions"] == [] and "prescription number" in first["reply"]
    second = chat(daemon, "7654321", first["session_id"])
    action = second["actions"][0]
    assert action["tool"] == "request_refill" and action["result"]["ticket"].startswith("T-")


def test_opening_hours_come_from_its_config(daemon: RunningDaemon) -> None:
    turn = chat(daemon, "are you open on saturday?")
    assert turn["actions"][0]["arguments"] == {"day": "saturday"}
    assert "10:00-14:00" in turn["reply"]


@pytest.mark.parametrize("message", ["how many of these tablets can I take a day?",
                                     "is it ok to double my dose of lisinopril"])
def test_never_dosing_advice(daemon: RunningDaemon, message: str) -> None:
    turn = chat(daemon, message)
    assert turn["actions"] == [] and "ask the pharmacist" in turn["reply"]


def test_its_config_is_checked_by_the_kit(site: Path) -> None:
    tmp = short_tmpdir()
    try:
        config = pharmacy_config(tmp / "st", tmp, hours={"funday": "09:00-18:00"})
        d = start_daemon(config, state_dir=tmp / "st", env={"PYTHONPATH": str(site)},
                         expect_ready=False)
        assert d.proc.wait(120) == 78
        assert "agents.pharmacy.hours.funday: not a day" in d.log()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_without_the_package_its_tools_are_unknown() -> None:
    tmp = short_tmpdir()
    try:
        d = start_daemon(pharmacy_config(tmp / "st", tmp), state_dir=tmp / "st",
                         expect_ready=False)
        assert d.proc.wait(120) == 78
        assert "unknown tool 'check_prescription'" in d.log()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_tool_it_does_not_allow_is_refused(daemon: RunningDaemon) -> None:
    with pytest.raises(ApiError) as e:
        daemon.client.post("/v1/agents/kiosk/chat", {"message": "hi"})
    assert e.value.status == 404
