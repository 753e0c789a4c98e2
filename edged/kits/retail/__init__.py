"""The retail kit: an electronics store's stock, alternatives, quotes and staff tickets."""

from __future__ import annotations

from pathlib import Path

from edged.agents.kit import KitContext, Toolset
from edged.kits.retail.catalog import load_catalog, seed_catalog
from edged.kits.retail.options import RetailOptions, parse_options
from edged.kits.retail.tools import RetailTools
from edged.tomlreader import Table


class RetailKit:
    name = "retail"
    tool_names = frozenset({"check_inventory", "find_alternatives", "create_price_quote",
                            "create_ticket"})
    examples_file: Path | None = None

    def parse_options(self, t: Table) -> RetailOptions:
        return parse_options(t)

    async def build(self, ctx: KitContext) -> Toolset:
        await seed_catalog(ctx.store, ctx.data_file("catalog.json"))
        options: RetailOptions = ctx.options
        return RetailTools(options, ctx.store, await load_catalog(ctx.store), ctx.tickets)


KIT = RetailKit()
