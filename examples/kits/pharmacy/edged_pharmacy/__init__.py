"""The pharmacy kit: prescription status, refill requests (tickets), opening hours from its
config, and never dosing advice. Built only on ``edged.agents.kit``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edged.agents.kit import KitContext, Toolset
from edged.tomlreader import Table
from edged_pharmacy.tools import PharmacyOptions, PharmacyTools, load_prescriptions, parse_options

EXAMPLES = Path(__file__).parent / "examples.toml"


class PharmacyKit:
    name = "pharmacy"
    tool_names = frozenset({"check_prescription", "request_refill", "opening_hours"})
    examples_file: Path | None = EXAMPLES

    def parse_options(self, t: Table) -> PharmacyOptions:
        return parse_options(t)

    async def build(self, ctx: KitContext) -> Toolset:
        options: PharmacyOptions = ctx.options
        prescriptions = await asyncio.to_thread(load_prescriptions, options.prescriptions)
        return PharmacyTools(options, prescriptions, ctx.tickets)


KIT = PharmacyKit()
