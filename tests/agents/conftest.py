from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.edgedtest import (
    MODEL_CACHE,
    REPO,
    RunningDaemon,
    base_config,
    bundled_alias,
    bundled_model,
    deep_merge,
    short_tmpdir,
    start_daemon,
)

KIOSK_TOOLS = ["check_inventory", "find_alternatives", "create_price_quote", "create_ticket"]
CLINIC_TOOLS = ["check_appointment_availability", "book_appointment", "access_patient_portal",
                "escalate_to_human"]


# The bundled sentence encoder (config/edged.toml's [models.minilm]).
MINILM = {"format": "onnx", "package": "all_minilm_l6_v2", "kind": "embedding", "context": 256,
          "sha256": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"}


def agents_config(state_dir: Path, *, model: bool = True, **agents: Any) -> dict[str, Any]:
    """The shipped kiosk and clinic agents on the bundled model and encoder (or, with
    ``model=False``, on a model alias that is never loaded and no encoder: routing by
    words, template replies)."""
    common = {"model": "gemma3-270m", "model_slots": model, "model_reply": model,
              "embeddings": model}
    doc = {
        "models": {"cache_dir": str(MODEL_CACHE), "gemma3-270m": bundled_alias(
            embedding=True, context=1024, chat_format="gemma-base")},
        "agents": {
            "data_dir": str(REPO / "config" / "data"),
            "kiosk": {**common, "tools": KIOSK_TOOLS, "store": "downtown", "tax_rate": 0.08,
                      "discounts": [{"min_quantity": 5, "percent": 5.0}],
                      "examples_file": str(REPO / "config" / "agents" / "kiosk.toml"),
                      "instructions": "You are the assistant of an electronics store."},
            "clinic": {**common, "tools": CLINIC_TOOLS, "phi": True,
                       "examples_file": str(REPO / "config" / "agents" / "clinic.toml"),
                       "instructions": "You are a clinic's patient-support assistant."},
        },
    }
    if model:
        doc["models"]["minilm"] = MINILM
        doc["agents"]["encoder"] = "minilm"
    return deep_merge(deep_merge(base_config(state_dir), doc), {"agents": agents})


@pytest.fixture(scope="module")
def module_tmp() -> Iterator[Path]:
    path = short_tmpdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def agents_daemon(module_tmp: Path) -> Iterator[RunningDaemon]:
    """One daemon per module with both agents and no model (words-only routing, template
    replies). The clinic is for the group edged-clinic-test (and admins) only; ``nobody``
    is a client."""
    os.chmod(module_tmp, 0o755)  # nobody (group nogroup, a client) reaches the socket too
    config = agents_config(module_tmp / "st", model=False,
                           clinic={"allowed_groups": ["edged-clinic-test"]})
    config["daemon"].update(socket=str(module_tmp / "a.sock"), socket_mode="0666",
                            client_groups=["nogroup"])
    d = start_daemon(config, state_dir=module_tmp / "st")
    yield d
    d.stop()


@pytest.fixture(scope="module")
def model_daemon(module_tmp: Path) -> Iterator[RunningDaemon]:
    """Both agents on the bundled model: embeddings, model slots and model replies."""
    bundled_model()
    d = start_daemon(agents_config(module_tmp / "sm"), state_dir=module_tmp / "sm")
    yield d
    d.stop()


@pytest.fixture(scope="module")
def routing_daemon(module_tmp: Path) -> Iterator[RunningDaemon]:
    """The bundled model for routing and slots only: replies are templates, which keeps the
    evaluation of 126 requests short on a small machine (scripts/bench/agents.py times the
    full turns)."""
    bundled_model()
    config = agents_config(module_tmp / "sr", kiosk={"model_reply": False},
                           clinic={"model_reply": False})
    d = start_daemon(config, state_dir=module_tmp / "sr")
    yield d
    d.stop()
