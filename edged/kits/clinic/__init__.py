"""The clinic kit: appointment availability, booking, the patient portal, staff hand-off,
and the safety override that escalates emergencies before anything else."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edged.agents import portal
from edged.agents.kit import KitContext, Toolset
from edged.kits.clinic.tools import (
    ClinicTools,
    load_clinic_seed,
    load_exemplars,
    load_rule,
    seed_providers,
)
from edged.tomlreader import Table

OVERRIDES = Path(__file__).parent / "overrides.toml"  # the rule, cancel, core exemplars
TRIAGE = Path(__file__).parent / "triage.toml"  # urgent and routine exemplars, many wordings


class ClinicKit:
    name = "clinic"
    tool_names = frozenset({"check_appointment_availability", "book_appointment",
                            "access_patient_portal", "escalate_to_human"})
    examples_file: Path | None = None

    def parse_options(self, t: Table) -> None:
        return None  # no options of its own: the portal key is the runtime's (portal_key)

    async def build(self, ctx: KitContext) -> Toolset:
        providers, patients = await asyncio.to_thread(
            load_clinic_seed, ctx.data_file("clinic.json"))
        await seed_providers(ctx.store, providers)
        key = await asyncio.to_thread(portal.load_or_create_key,
                                      ctx.spec.portal_key or ctx.keys_dir / "portal.key")
        groups = await asyncio.to_thread(load_exemplars, OVERRIDES, TRIAGE)
        rule = await asyncio.to_thread(load_rule, OVERRIDES)
        return ClinicTools(ctx.spec, ctx.store, providers, patients, ctx.tickets, key,
                           ctx.sealer, ctx.clock, groups, rule)


KIT = ClinicKit()
