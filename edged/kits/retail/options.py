"""The retail kit's agent options: the store the kiosk stands in, currency, tax, discounts."""

from __future__ import annotations

from dataclasses import dataclass

from edged.errors import ConfigError
from edged.tomlreader import Table


@dataclass(frozen=True)
class Discount:
    """``percent`` off a line with at least ``min_quantity`` units, or off the whole quote
    when its subtotal reaches ``min_subtotal``."""

    percent: float
    min_quantity: int | None
    min_subtotal: float | None


@dataclass(frozen=True)
class RetailOptions:
    store: str  # the store this kiosk stands in ("" = the catalog's first)
    currency: str
    tax_rate: float
    discounts: tuple[Discount, ...]


def _parse_discount(t: Table) -> Discount:
    d = Discount(percent=t.float("percent", min=0, max=100),
                 min_quantity=t.int("min_quantity", None, min=1),
                 min_subtotal=t.float("min_subtotal", None, min=0))
    t.done()
    if (d.min_quantity is None) == (d.min_subtotal is None):
        raise ConfigError(f"{t.key('min_quantity')}: give exactly one of min_quantity or "
                          "min_subtotal")
    return d


def _parse_discounts(t: Table) -> tuple[Discount, ...]:
    raw = t.raw("discounts", [])
    if not isinstance(raw, list) or not all(isinstance(d, dict) for d in raw):
        raise ConfigError(f"{t.key('discounts')}: expected a list of tables")
    return tuple(_parse_discount(Table(d, f"{t.key('discounts')}[{i}]", t.base_dir))
                 for i, d in enumerate(raw))


def parse_options(t: Table) -> RetailOptions:
    return RetailOptions(store=t.str("store", ""), currency=t.str("currency", "USD"),
                         tax_rate=t.float("tax_rate", 0.0, min=0, max=1),
                         discounts=_parse_discounts(t))
