"""A power profile switch, through a sysfs fixture folder, changes what the manager does
next: a low battery serves a model's smaller variant, with one thread, one model loaded."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tests.edgedtest import MODEL_CACHE, bundled_alias

FIXTURES = Path(__file__).parent / "fixtures"


def chat(d: Any, alias: str) -> None:
    d.client.post("/v1/chat/completions", {
        "model": alias, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})


def test_low_battery_serves_the_smaller_variant(edged: Any, short_tmp: Path,
                                                bundled_model_path: Path) -> None:
    sysfs = short_tmp / "sysfs"
    shutil.copytree(FIXTURES / "sysfs_ac", sysfs)
    d = edged({
        "power": {"power_supply_root": str(sysfs / "power_supply"),
                  "thermal_root": str(sysfs / "thermal"), "poll_interval": "1s"},
        "models": {"cache_dir": str(MODEL_CACHE),
                   "big": bundled_alias(context=2048, threads=2, variants=["small"]),
                   "small": bundled_alias(context=512, threads=2)}})
    chat(d, "big")
    ps = d.client.get("/admin/ps")
    assert ps["profile"] == "ac" and [m["model"] for m in ps["models"]] == ["big"]
    # Unplug: mains offline, the battery discharging at 10 %.
    (sysfs / "power_supply/AC/online").write_text("0\n")
    (sysfs / "power_supply/BAT0/status").write_text("Discharging\n")
    (sysfs / "power_supply/BAT0/capacity").write_text("10\n")
    while ps["profile"] != "low_battery":
        ps = d.client.get(f"/admin/ps?generation={ps['generation']}&wait=30")
    assert d.client.get("/health")["power"]["profile"] == "low_battery"
    chat(d, "big")
    models = d.client.get("/admin/ps")["models"]
    # max_loaded 1 under low_battery: the big model made way for its variant.
    assert [(m["model"], m["threads"]) for m in models] == [("small", 1)]
