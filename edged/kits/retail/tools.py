"""The retail kiosk's tools over the local catalog, and how their arguments are found in text.

A product the store does not carry still reaches the tool, which says so and offers what it
has instead: the customer gets an answer, not a shrug.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Annotated, Literal, TypedDict

from edged.agents.slots import NUMBER_WORDS, money, normalize, pick_listed, quantity, words
from edged.agents.tickets import Tickets
from edged.agents.tools import JSON, Limits, Tool, ToolContext, collect, tool
from edged.kits.retail.catalog import CATEGORY_WORDS, COLOR_WORDS, Catalog, Line, Product
from edged.kits.retail.options import RetailOptions
from edged.store import Store

# The most units one quote line takes: more is a typo or a joke, and the kiosk asks
# rather than pricing it. Not configurable: bulk orders go to staff, not the kiosk.
MAX_QUOTE_QUANTITY = 100


class QuoteLine(TypedDict):
    product: Annotated[str, Limits(max_length=80)]
    # Any number the customer said reaches the tool, which asks about a bad one ("-3",
    # "2.5") instead of the schema or the parser quietly making it another.
    quantity: Annotated[float, Limits(minimum=-1e9, maximum=1e9)]


TicketTopic = Literal["repair", "return", "order", "staff", "complaint", "other"]


def _row(p: Product, stock: dict[str, int], here: str) -> JSON:
    return {"sku": p.sku, "name": p.name, "price": p.price,
            "in_stock_here": stock.get(here, 0),
            "elsewhere": {s: q for s, q in stock.items() if s != here and q > 0}}


QUESTIONS = {
    "product": "Which product do you mean?",
    "items": "Which products would you like priced, and how many of each?",
}


class RetailTools:
    handoff = "create_ticket"

    def __init__(self, options: RetailOptions, store: Store, catalog: Catalog,
                 tickets: Tickets) -> None:
        self._options = options
        self._store = store
        self.catalog = catalog
        self._tickets = tickets
        self.here = options.store or next(iter(catalog.stores), "")
        self._named = {p.name.lower(): p for p in catalog.by_sku.values()}
        # store ids and name words, as matched and as cut out of a text (built once)
        self._store_words = {sid: {w for w in words(name)
                                   if len(w) > 3 and w not in _GENERIC_STORE_WORDS}
                             for sid, name in catalog.stores.items()}
        names = sorted({w for sid, name in catalog.stores.items()
                        for w in (sid, *words(name)) if len(w) > 2}, key=len, reverse=True)
        self._store_names = (re.compile(r"\b(?:" + "|".join(map(re.escape, names)) + r")\b",
                                        re.I) if names else None)

    def tools(self) -> list[Tool]:
        return collect(self)

    async def _stock(self, skus: list[str]) -> dict[str, dict[str, int]]:
        marks = ",".join("?" * len(skus))
        rows = await self._store.fetchall(
            f"SELECT sku, store, quantity FROM catalog_stock WHERE sku IN ({marks})", skus)
        stock: dict[str, dict[str, int]] = {s: {} for s in skus}
        for r in rows:
            stock[r["sku"]][r["store"]] = r["quantity"]
        return stock

    @tool
    async def check_inventory(
        self, ctx: ToolContext, product: Annotated[str, Limits(max_length=80)],
        color: str | None = None, storage: str | None = None, size: str | None = None,
        max_price: Annotated[float, Limits(minimum=0, maximum=100000)] | None = None,
        store: Annotated[str, Limits(max_length=40)] | None = None,
    ) -> JSON:
        """Check whether a product is in stock in this store and the others.

        Args:
            product: product name, model or SKU as the customer said it
            color: wanted color, if any
            storage: wanted storage, e.g. 256GB
            size: wanted size, e.g. 65in or 46mm
            max_price: the customer's budget, if they gave one
            store: another store the customer asks about (its id), if any

        Keywords: stock, in stock, available, availability, have, carry, sell, left
        """
        line = self.catalog.match_line(product)
        if line is None and _names_only_a_category(self.catalog, product):
            return await self._category_stock(self.catalog.category_named(product) or "",
                                              max_price)
        if line is None:
            return await self._not_carried(product)
        wanted = " ".join(v for v in (color, storage, size) if v)
        variants = self.catalog.variants(line.line, wanted) if wanted else list(line.line.variants)
        # A value no variant has ("1TB") filters nothing in ``variants``: it is not sold.
        unknown = [v for k, v in (("color", color), ("storage", storage), ("size", size))
                   if v and self.catalog.attribute_in(line.line, k, v) is None]
        if not variants or unknown:
            options = sorted({_variant_label(p) for p in line.line.variants})
            return {"carried": True, "product": line.line.model, "variant_found": False,
                    "asked": wanted, "options": options,
                    "summary": f"We carry the {line.line.model}, but not in {wanted}; "
                               f"there is no such version. It comes in: {', '.join(options)}."}
        where = self.store_of(store) or self.here
        stock = await self._stock([p.sku for p in variants])
        rows = [_row(p, stock[p.sku], where) for p in variants]
        here = sum(r["in_stock_here"] for r in rows)
        named = _variant_named(variants, [k for k, v in (("color", color), ("storage", storage),
                                                          ("size", size)) if v])
        return {"carried": True, "product": line.line.model, "variant_found": True,
                "in_stock_here": here if where == self.here else None,
                "in_stock_there": here if where != self.here else None,
                "store": where, "variants": rows[:8],
                "summary": self._stock_summary(line.line, rows, here, named, where)}

    def store_of(self, said: str | None) -> str | None:
        """A store id from what the customer called it ("the mall", "airport", an id)."""
        if not said:
            return None
        toks = set(words(said))
        for sid, own in self._store_words.items():
            if sid in toks or own & toks:
                return sid
        return None

    def _without_stores(self, text: str) -> str:
        """The text with store names out: "the riverside one" names no product."""
        return self._store_names.sub(" ", text) if self._store_names else text

    def _stock_summary(self, line: Line, rows: list[JSON], here: int, wanted: str,
                       where: str) -> str:
        what = f"{line.model} {wanted}".strip()
        if where != self.here:
            name = self.catalog.stores.get(where, where)
            avail = [r for r in rows if r["in_stock_here"]]
            top = ", ".join(f"{r['name']} ({r['in_stock_here']} left)" for r in avail[:3])
            return (f"Yes, {name} has the {what} in stock: {top}." if here
                    else f"{name} has no {what} in stock right now.")
        if here:
            avail = [r for r in rows if r["in_stock_here"]]
            top = ", ".join(f"{r['name']} ({r['in_stock_here']} left, ${r['price']:.2f})"
                            for r in avail[:3])
            return f"Yes, we have the {what} in stock here: {top}."
        elsewhere = sorted({s for r in rows for s in r["elsewhere"]})
        if elsewhere:
            names = ", ".join(self.catalog.stores.get(s, s) for s in elsewhere)
            return f"The {what} is out of stock here, but available at: {names}."
        return f"The {what} is out of stock in all our stores."

    async def _category_stock(self, category: str, cap: float | None) -> JSON:
        """A need, not a product ("a phone under 400"): what fits, cheapest first."""
        found = (await self._in_stock_of(category, None, exclude=None, cap=cap))[:3]
        under = f" under ${cap:.2f}" if cap is not None else ""
        names = ", ".join(f"{a['name']} (${a['price']:.2f}, {a['in_stock_here']} left)"
                          for a in found)
        summary = (f"In stock here in {category}{under}: {names}." if found
                   else f"I found no {category}{under} in stock here.")
        return {"found": bool(found), "category": category, "max_price": cap,
                "alternatives": found, "summary": summary}

    async def _not_carried(self, product: str) -> JSON:
        category = self.catalog.category_of(product)
        alternatives = await self._in_stock_of(category, None, exclude=None) if category else []
        names = ", ".join(f"{a['name']} (${a['price']:.2f})" for a in alternatives[:3])
        summary = f"Sorry, we don't carry {product}."
        if names:
            summary += f" In stock instead: {names}."
        return {"carried": False, "product": product, "category": category,
                "alternatives": alternatives[:3], "summary": summary}

    async def _in_stock_of(self, category: str | None, price: float | None,
                           exclude: Line | None, cap: float | None = None) -> list[JSON]:
        rows = await self._store.fetchall(
            "SELECT p.sku, p.name, p.model, p.price, s.quantity FROM catalog_products p "
            "JOIN catalog_stock s ON s.sku = p.sku "
            "WHERE p.category = ? AND s.store = ? AND s.quantity > 0 "
            "AND p.price <= ? ORDER BY p.price",
            (category, self.here, cap if cap is not None else 1e12))
        found = [{"sku": r["sku"], "name": r["name"], "price": r["price"],
                  "in_stock_here": r["quantity"], "model": r["model"]}
                 for r in rows if exclude is None or r["model"] != exclude.model]
        if price is not None:
            found.sort(key=lambda a: abs(a["price"] - price))
        seen: set[str] = set()
        unique = []
        for a in found:  # one variant per model, so three suggestions are three choices
            if a["model"] not in seen:
                seen.add(a["model"])
                unique.append({k: v for k, v in a.items() if k != "model"})
        return unique

    @tool
    async def find_alternatives(
        self, ctx: ToolContext, product: Annotated[str, Limits(max_length=80)],
        max_price: Annotated[float, Limits(minimum=0, maximum=100000)] | None = None,
    ) -> JSON:
        """Suggest in-stock products of the same category at a similar price.

        Args:
            product: the product to replace, or a category such as laptops
            max_price: the customer's budget, if they gave one

        Keywords: alternative, instead, similar, cheaper, recommend, suggest, other options
        """
        match = self.catalog.match_line(product)
        category = match.line.category if match else self.catalog.category_of(product)
        if category is None:
            return {"found": False, "product": product, "alternatives": [],
                    "summary": f"I couldn't tell what kind of product {product} is."}
        price = match.line.variants[0].price if match else max_price
        alternatives = await self._in_stock_of(category, price, match.line if match else None,
                                               cap=max_price)
        if match and price is not None and max_price is None:  # near the price: within 40%
            alternatives = [a for a in alternatives if abs(a["price"] - price) <= 0.4 * price
                            ] or alternatives
        top = alternatives[:3]
        names = ", ".join(f"{a['name']} (${a['price']:.2f})" for a in top)
        named = match is None and _names_only_a_category(self.catalog, product)
        base = match.line.model if match else category if named else product
        under = f" under ${max_price:.2f}" if max_price is not None else ""
        if named:  # a need ("headphones under 200"), not a product to replace
            summary = (f"In stock here in {category}{under}: {names}." if top
                       else f"I found no {category}{under} in stock here.")
        else:
            summary = (f"Instead of the {base}, we have in stock: {names}." if top
                       else f"I found no in-stock alternatives to the {base}.")
        return {"found": bool(top), "product": base, "category": category,
                "alternatives": top, "summary": summary}

    @tool
    async def create_price_quote(
        self, ctx: ToolContext, items: Annotated[list[QuoteLine], Limits(max_items=10)],
    ) -> JSON:
        """Price a list of products with quantities, discounts and tax.

        Args:
            items: each product and how many units

        Keywords: quote, price, cost, how much, total, estimate, buy, bulk
        """
        lines, missing, unclear, asks = [], [], {}, []
        for item in items:
            match = self.catalog.match_line(item["product"])
            if match is None:
                missing.append(item["product"])
                continue
            rivals = self.catalog.rivals(match)
            if rivals:
                unclear[item["product"]] = [match.line.model] + [r.model for r in rivals]
                asks.append(f"Which {item['product']} do you mean: "
                            f"{' or '.join(unclear[item['product']])}?")
                continue
            product, ask = self._quoted_variant(match.line, item["product"])
            qty = item["quantity"]
            if ask is None and (qty != int(qty) or not 1 <= qty <= MAX_QUOTE_QUANTITY):
                ask = (f"A quote line takes 1 to {MAX_QUOTE_QUANTITY} units, so I can't "
                       f"quote {_said_number(qty)}. How many {match.line.model} would you like?")
            if ask is not None or product is None:
                unclear[item["product"]] = [_variant_label(p) for p in match.line.variants]
                asks.append(ask or "")
                continue
            lines.append(self._price_line(product, int(qty)))
        if unclear:
            return {"quoted": False, "unclear": unclear, "items": items,
                    "summary": " ".join(asks)}
        if not lines:
            return {"quoted": False, "not_carried": missing,
                    "summary": f"Sorry, we don't carry {', '.join(missing)}."}
        return await self._save_quote(ctx, lines, missing)

    def _quoted_variant(self, line: Line, said: str) -> tuple[Product | None, str | None]:
        """The variant the words name, the first when they name none, or a question when
        they name one the line lacks ("1TB") or fit several lines of sizes (a "card")."""
        options = ", ".join(sorted({_variant_label(p) for p in line.variants}))
        storage = self.catalog.storage_said(said)
        chosen = self.catalog.variants(line, said)
        if ((storage and self.catalog.attribute_in(line, "storage", storage) is None)
                or not chosen):
            named = storage or said
            return None, (f"There is no {named} version of the {line.model}; it comes in "
                          f"{options}. Which one would you like?")
        sizes = {p.attributes.get("storage") for p in chosen} - {None}
        if len(sizes) > 1 and line.category == "storage":  # a card's size is the product
            return None, f"Which {line.model} would you like: {options}?"
        return chosen[0], None

    def _price_line(self, p: Product, qty: int) -> JSON:
        percent = max((d.percent for d in self._options.discounts
                       if d.min_quantity is not None and qty >= d.min_quantity), default=0.0)
        gross = round(p.price * qty, 2)
        return {"sku": p.sku, "name": p.name, "quantity": qty, "unit_price": p.price,
                "discount_percent": percent, "amount": round(gross * (1 - percent / 100), 2)}

    async def _save_quote(self, ctx: ToolContext, lines: list[JSON], missing: list[str]) -> JSON:
        subtotal = round(sum(line["amount"] for line in lines), 2)
        percent = max((d.percent for d in self._options.discounts
                       if d.min_subtotal is not None and subtotal >= d.min_subtotal), default=0.0)
        discounted = round(subtotal * (1 - percent / 100), 2)
        tax = round(discounted * self._options.tax_rate, 2)
        quote = {"id": f"Q-{uuid.uuid4().hex[:8].upper()}", "lines": lines,
                 "subtotal": subtotal, "order_discount_percent": percent,
                 "tax_rate": self._options.tax_rate, "tax": tax,
                 "total": round(discounted + tax, 2), "currency": self._options.currency}
        async with self._store.transaction() as db:
            await db.execute("INSERT INTO price_quotes (id, agent, created, body) VALUES "
                             "(?, ?, ?, ?)", (quote["id"], ctx.agent, time.time(),
                                              json.dumps(quote)))
        items = ", ".join(f"{ln['quantity']} x {ln['name']} at ${ln['unit_price']:.2f}"
                          + (f" ({ln['discount_percent']:g}% off)" if ln["discount_percent"]
                             else "") for ln in lines)
        # The discount is said, so subtotal - discount + tax = total adds up on the screen.
        off = (f", {percent:g}% order discount -${subtotal - discounted:.2f}" if percent
               else "")
        summary = (f"Quote {quote['id']}: {items}. Subtotal ${subtotal:.2f}{off}, "
                   f"tax ${tax:.2f}, total ${quote['total']:.2f}.")
        if missing:
            summary += f" We don't carry {', '.join(missing)}."
        return {"quoted": True, **quote, "not_carried": missing, "summary": summary}

    @tool
    async def create_ticket(
        self, ctx: ToolContext, topic: TicketTopic,
        summary: Annotated[str, Limits(max_length=200)],
    ) -> JSON:
        """Ask a staff member to help: repairs, returns, orders, complaints or anything else.

        Args:
            topic: what kind of help is needed
            summary: the request in a sentence

        Keywords: staff, person, human, employee, help desk, repair, return, refund, complaint
        """
        ticket = await self._tickets.open(ctx.agent, topic, {"summary": summary,
                                                              "store": self.here})
        return {"ticket": ticket, "topic": topic,
                "summary": f"I've asked a staff member to help with your {topic} request "
                           f"(ticket {ticket}); someone will be with you shortly."}

    # -- dialogue hooks (edged/agents/kit.py)

    def question(self, tool_name: str, slot: str) -> str | None:
        return QUESTIONS.get(slot)

    def follow_up(self, tool_name: str, args: JSON, result: JSON) -> tuple[str, JSON] | None:
        """Out of stock here: look for alternatives at once, as a shop assistant would."""
        if (tool_name == "check_inventory" and result.get("carried")
                and result.get("variant_found") and result.get("in_stock_here") == 0):
            return "find_alternatives", {"product": result["product"]}
        return None


    def extract(self, tool_name: str, text: str, state: JSON) -> JSON:
        """Arguments for ``tool_name`` found in ``text``; the last product fills a gap."""
        store = self.store_of(text)
        text = self._without_stores(text)
        listed = state.get("listed") or []
        picked = pick_listed(text, listed)
        if picked is None:
            picked = self._by_price(text, listed)
        if picked is not None and self.catalog.match_line(text) is None:
            named = self.catalog.match_line(listed[picked])  # "the second one", "the Bose one"
            text = f"{named.line.model if named else listed[picked]} {text}"
        last = state.get("product")
        asked = state.get("uncarried")  # "what's cheaper than that?" after one we don't carry
        match = self.catalog.match_line(text)
        if match is None and last:  # "what about the pro?" after the Pixel 9
            match = self.catalog.match_line(f"{last} {text}")
        if match is None and last and _REFERS.search(text):
            product = last  # "is it at any of your other stores?": the product last named
        else:
            product = (self.catalog.name_of(match.line) if match
                       else _residual(text) or last or asked)
        if match is None and _names_only_a_category(self.catalog, text):
            product = self.catalog.category_named(text)  # "a console for my kid": a need
        if tool_name == "check_inventory" and match is None and product != _residual(text):
            return {"product": product, "max_price": money(text)}
        if tool_name == "check_inventory":
            line = match.line if match else (self._line_named(last) if last else None)
            args: JSON = {"product": product, "store": store}
            if line is not None:
                for key in ("color", "storage", "size"):
                    args[key] = self.catalog.attribute_in(line, key, text)
                # A size we don't sell is still the customer's: the tool says there is none.
                args["storage"] = args["storage"] or self.catalog.storage_said(text)
                args["size"] = args["size"] or self.catalog.size_said(text)
            return args
        if tool_name == "find_alternatives":
            # Only what the message or the conversation names; nothing grounded: ask.
            category = self.catalog.category_of(text)
            grounded = match.line.model if match else category or last or asked
            return {"product": grounded, "max_price": money(text)}
        if tool_name == "create_price_quote":
            pending = state.get("pending") or {}
            if pending.get("tool") == tool_name and pending.get("args", {}).get("items"):
                return {"items": self._resolve(pending["args"]["items"], text)}
            changed = self._quote_changed(text, state)
            if changed is not None:
                return {"items": changed}
            items = self._quote_items(text, state)
            previous = state.get("quote") or []
            if previous and _ADDS.search(text) and self.catalog.match_line(text):
                return {"items": [*previous, *items]}  # "and one airpods 4 as well"
            return {"items": items}
        if tool_name == "create_ticket":
            return {"topic": _ticket_topic(text), "summary": text.strip()[:200]}
        return {}

    def _by_price(self, text: str, listed: list[str]) -> int | None:
        """"the cheaper one", "the more expensive one" among what the last reply listed."""
        low = " ".join(words(text))
        cheap = re.search(r"\b(?:cheap(?:er|est)|less expensive|lower priced)\b", low)
        dear = re.search(r"\b(?:(?:more|most) expensive|pricier|priciest|dearer)\b", low)
        if not listed or not (cheap or dear) or self.catalog.match_line(text) is not None:
            return None
        prices = [self._price_named(name) for name in listed]
        known = [(p, i) for i, p in enumerate(prices) if p is not None]
        if len(known) < 2:
            return None
        return (min(known) if cheap else max(known))[1]

    def _price_named(self, name: str) -> float | None:
        found = self._named.get(name.lower())
        return found.price if found else None

    def _quote_changed(self, text: str, state: JSON) -> list[JSON] | None:
        """A change to the last quote that names no product: "actually 3 of them", "a
        couple is enough", "make it the 55", "two of the 55s": the same line, with the
        quantity or variant now said (later values replace earlier ones)."""
        previous = state.get("quote") or []
        if not previous or self.catalog.match_line(text) is not None:
            return None
        rest = [w for w in (_residual(text) or "").split()
                if w not in NUMBER_WORDS and not w.isdigit() and w not in _CHANGE_WORDS]
        if rest and not _REFERS.search(text):
            return None  # "quote 2 flux capacitors" names something else, unknown
        last = previous[-1]
        line = self._line_named(str(state.get("product") or last["product"]))
        count = quantity(text)
        variant = ""
        if line is not None:
            sizes = self.catalog.sizes_of(line)
            count = quantity(" ".join(w for w in words(text) if w.rstrip("s") not in sizes))
            variant = " ".join(v for k in ("storage", "size", "color")
                               if (v := self.catalog.attribute_in(line, k, text)))
        if count is None and not variant:
            return None
        product = f"{line.model} {variant}" if line is not None and variant else last["product"]
        return [*previous[:-1], {"product": product,
                                 "quantity": count if count is not None else last["quantity"]}]

    def continues(self, last_tool: str, text: str, state: JSON) -> str | None:
        """After a quote, "add X", "X too", "a couple is enough" change that quote."""
        if last_tool != "create_price_quote":
            return None
        if _ADDS.search(text) and self.catalog.match_line(text):
            return "create_price_quote"
        line = self._line_named(str(state.get("product") or ""))
        sizes = self.catalog.sizes_of(line) if line is not None else set()
        # "the cheaper one" is no quantity: "one" counts only where a number would
        said = [w for w in words(text) if w.rstrip("s") not in sizes and w != "one"]
        count = quantity(" ".join(said))
        if self.catalog.match_line(text) is None and count is not None:
            return "create_price_quote"
        return None

    def _line_named(self, model: str) -> Line | None:
        found = self.catalog.match_line(model)
        return found.line if found else None

    def _quote_items(self, text: str, state: JSON) -> list[JSON]:
        items: list[JSON] = []
        unknown_items: list[JSON] = []
        for whole in re.split(r"\band\b|,|\bplus\b|\+", text):
            count, part = self._leading_quantity(whole)
            match = self.catalog.match_line(part)
            if match is None:
                by_brand = self.catalog.lines_of_brand(part)
                if len(by_brand) == 1:  # "2 Anker chargers"
                    match = self.catalog.match_line(self.catalog.name_of(by_brand[0]))
            if match is None and _only_a_count(part):
                # "the sonos era 100, two of them": the count of the line just named, or of
                # the product last talked about
                said = quantity(part)
                if items and said is not None:
                    items[-1] = {**items[-1], "quantity": said}
                elif said is not None and state.get("product"):
                    items.append({"product": f"{state['product']} {state.get('attrs', '')}"
                                  .strip(), "quantity": said})
                continue
            if match is None:
                unknown = " ".join(w for w in (_residual(part) or "").split()
                                   if not w.isdigit())
                said_count = count is not None or quantity(part) is not None
                if unknown and said_count:  # "2 flux capacitors" is not dropped unsaid
                    unknown_items.append({"product": unknown[:80], "quantity": 1})
                continue
            if count is None:  # "u8 55" is the 55in, not 55 of them
                sizes = self.catalog.sizes_of(match.line)
                count = quantity(" ".join(w for w in words(part)
                                          if w not in match.span and w not in sizes))
            attrs = " ".join(v for k in ("storage", "size", "color")
                             if (v := self.catalog.attribute_in(match.line, k, part)))
            if self.catalog.attribute_in(match.line, "storage", part) is None:
                attrs = f"{self.catalog.storage_said(part) or ''} {attrs}"  # kept, to be asked
            # Words that fit several lines ("airpods") stay the customer's, so the quote
            # asks which one instead of pricing a guess.
            name = (" ".join(match.span) if self.catalog.rivals(match)
                    else self.catalog.name_of(match.line))
            items.append({"product": f"{name} {attrs}".strip(),
                          "quantity": 1 if count is None else count})
        last = state.get("product")
        if not items and unknown_items:
            return unknown_items  # "2 flux capacitors" is not the product last talked about
        if not items and last:  # "how much for 6 of them?": the product and variant last said
            items.append({"product": f"{last} {state.get('attrs', '')}".strip(),
                          "quantity": quantity(text) or 1})
            return items
        return items + unknown_items

    def _leading_quantity(self, part: str) -> tuple[float | None, str]:
        """"3 pixel 9" is 3 of the Pixel 9 (the quantity binds to the product after it),
        but "pixel 9 pro" is no quantity: a number counts only before the product."""
        for m in _COUNT.finditer(part):
            before, after = part[:m.start()], part[m.end():]
            if _UNIT.match(after) or self.catalog.match_line(before) is not None:
                continue
            if self.catalog.match_line(after) is not None:
                word = m.group(1).lower()
                said = NUMBER_WORDS[word] if word in NUMBER_WORDS else float(word)
                return (int(said) if said == int(said) else said), after
        return None, part

    def _resolve(self, items: list[JSON], text: str) -> list[JSON]:
        """The answer to "which AirPods?": an ambiguous item read with the answer."""
        out = []
        for item in items:
            match = self.catalog.match_line(str(item["product"]))
            if match is not None and self.catalog.rivals(match):
                again = self.catalog.match_line(f"{item['product']} {text}")
                if again is not None and not self.catalog.rivals(again):
                    item = {**item, "product": again.line.model}
            elif match is not None and self._quoted_variant(match.line, item["product"])[1]:
                # "512GB then" after "there is no 1TB version": the answer's variant
                attrs = " ".join(v for k in ("storage", "size", "color")
                                 if (v := self.catalog.attribute_in(match.line, k, text)))
                if attrs:
                    item = {**item, "product": f"{self.catalog.name_of(match.line)} {attrs}"}
            qty = float(item["quantity"])
            if qty != int(qty) or not 1 <= qty <= MAX_QUOTE_QUANTITY:
                item = {**item, "quantity": quantity(text) or _bare_count(text) or qty}
            out.append(item)
        return out

    def check(self, tool_name: str, args: JSON) -> bool:
        """Do the arguments name things the catalog knows?"""
        if tool_name in ("check_inventory", "find_alternatives"):
            product = str(args.get("product") or "")
            return bool(product) and (self.catalog.match_line(product) is not None
                                      or self.catalog.category_of(product) is not None)
        if tool_name == "create_price_quote":
            items = args.get("items") or []
            return bool(items) and all(self.catalog.match_line(str(i.get("product", "")))
                                       for i in items)
        return True

    def remember(self, tool_name: str, args: JSON, result: JSON, state: JSON) -> None:
        """Keep what a follow-up ("and in black?") will refer to."""
        if tool_name == "create_ticket":  # "is it at your other stores?" after a complaint
            about = self.catalog.match_line(str(args.get("summary", "")))
            if about is not None:
                state["product"] = about.line.model
            return
        if tool_name == "create_price_quote" and result.get("unclear"):
            # Asked which one: the answer completes this request.
            state["pending"] = {"tool": tool_name, "args": {"items": result["items"]}}
            return
        if result.get("carried") is False:  # still what "that" refers to next
            state["uncarried"] = result["product"]
            state.pop("product", None)
            state.pop("attrs", None)
            return
        product = result.get("product")
        shown = result.get("lines") or result.get("alternatives") or result.get("variants")
        if shown:  # what "the second one" refers to next
            state["listed"] = [str(x["name"]) for x in shown][:8]
        if tool_name == "create_price_quote" and result.get("lines"):
            product = self._model_of(result["lines"][-1]["sku"])
            state["quote"] = [{"product": ln["name"], "quantity": ln["quantity"]}
                              for ln in result["lines"]]
        if not product:
            return
        if tool_name == "check_inventory":  # the variant chosen, for "how much for 6?"
            state["attrs"] = " ".join(str(args[k]) for k in ("color", "storage", "size")
                                      if args.get(k))
        elif product != state.get("product"):
            state.pop("attrs", None)
        state["product"] = product
        state.pop("uncarried", None)

    def _model_of(self, sku: str) -> str | None:
        p = self.catalog.by_sku.get(sku.lower())
        return p.model if p else None

    def mentions(self, text: str) -> bool:
        low = " " + normalize(text) + " "
        return (self.catalog.match_line(text) is not None
                or self.store_of(text) is not None
                or any(f" {c} " in low for c in COLOR_WORDS)
                or re.search(r"\b\d+ ?(?:gb|tb|mm|in|inch)\b|\bpro\b|\bplus\b|\bmax\b|"
                             r"\bultra\b|\bbigger\b|\bsmaller\b|\bcheaper\b", low) is not None
                or quantity(text) is not None)

    def mask(self, text: str) -> str:
        """Product names and numbers out, so routing sees the request, not the item."""
        match = self.catalog.match_line(text)
        out, named = [], False
        for w in words(text):
            if match and w in match.span:
                if not named:  # the product becomes one word, as in "do you have it?"
                    out.append("product")
                named = True
            else:
                out.append(w)
        sized = re.sub(r"\b\d+ ?(?:gb|tb|mm|in|inch|inches)\b", "size", " ".join(out))
        return re.sub(r"\b\d+\b", "2", sized)


_COUNT = re.compile(r"(?<![\w$.,-])(-?\d+(?:\.\d+)?|" + "|".join(
    w for w in NUMBER_WORDS if w not in ("a", "an", "single")) + r")(?:\s*x)?\s+(?=\S)", re.I)
_UNIT = re.compile(r"(?:gb|tb|mm|inch|in\b|am\b|pm\b|%|w\b)", re.I)


_ADDS = re.compile(r"\b(?:add|also|too|as well|plus|throw in|and another|on top)\b", re.I)
_CHANGE_WORDS = frozenset(("actually", "make", "instead", "change", "just", "enough", "wait",
                           "no", "of", "forgot", "need", "want", "then", "total", "altogether"))
_REFERS = re.compile(r"\b(?:of (?:them|those|these)|them|those|these|that one|it)\b", re.I)
_GENERIC_STORE_WORDS = frozenset(("store", "shop", "terminal", "main", "street"))


def _only_a_count(part: str) -> bool:
    """Is this piece of a quote only a count of something said before ("two of them",
    "a couple of those", "two of the 55s actually")?"""
    if quantity(part) is None:
        return False
    rest = [w for w in words(part) if w not in NUMBER_WORDS and not w.isdigit()
            and w not in _CHANGE_WORDS and not re.fullmatch(r"\d+s?", w)
            and w not in ("of", "them", "those", "these", "the", "ones", "one", "for", "me",
                          "please", "x", "units", "more")]
    return not rest or (bool(_REFERS.search(part)) and len(rest) <= 3)


def _bare_count(text: str) -> int | None:
    """The answer to "how many?" may be just the number."""
    m = re.fullmatch(r"\s*(\d{1,3})\s*[.!]?\s*", text)
    return int(m.group(1)) if m else None


def _said_number(n: float) -> str:
    return str(int(n)) if n == int(n) else str(n)


def _variant_named(variants: list[Product], keys: list[str]) -> str:
    """The catalog's own words for the variant asked ("Deep Sea Blue", not "blue"): each
    attribute asked that all the fitting variants share."""
    said = []
    for key in keys:
        values = {p.attributes.get(key, "") for p in variants}
        if len(values) == 1 and "" not in values:
            said.append(values.pop())
    return " ".join(said)


def _variant_label(p: Product) -> str:
    return " ".join(v for k, v in p.attributes.items() if k != "color_family")


_FILLER = frozenset((
    "do", "does", "you", "have", "has", "got", "is", "are", "there", "any", "the", "a", "an",
    "in", "stock", "available", "carry", "sell", "i", "want", "need", "looking", "for",
    "check", "can", "could", "would", "like", "please", "me", "my", "your", "store", "this",
    "today", "still", "left", "of", "some", "price", "how", "much", "quote", "on", "with",
    "get", "to", "buy", "what", "whats", "about", "and", "or", "hi", "hello", "hey", "know",
    "tell", "if", "it", "there's", "sorry", "instead", "similar", "alternatives", "something",
    "else", "other", "cheaper", "than", "under", "options", "one", "ones",
    "s", "that", "those", "these", "them", "they",  # "what's cheaper than that?" names nothing
    "ok", "okay", "yes", "yeah", "sure", "thanks", "then", "u",
))


# Words that say who or what a need is for, not which product: "a console for my kid".
_NEED = frozenset((
    "m", "kid", "kids", "son", "daughter", "child", "children", "gift", "present", "birthday",
    "cheap", "good", "best", "new", "decent", "nice", "dollars", "dollar", "bucks", "usd",
    "budget", "around", "below", "less", "over", "wife", "husband", "mom", "dad", "mum",
    "family", "teen", "teenager", "student", "school", "work", "home", "recommend",
    "suggest", "show", "affordable", "budget", "gaming",
))


def _names_only_a_category(catalog: Catalog, text: str) -> bool:
    """Does the text name a category and nothing more specific ("a phone under 400",
    not "iphone 15 pro max")?"""
    category = catalog.category_named(text)
    if category is None:
        return False
    own = set(CATEGORY_WORDS[category]) - {"iphone", "iphones"}  # a product we may lack
    rest = [w for w in (_residual(text) or "").split()
            if w not in own and w not in _NEED and not w.isdigit()
            and not re.fullmatch(r"\$?\d+(?:\.\d+)?k?", w)]
    return not rest


def _residual(text: str) -> str | None:
    """What is left of the text once request words are gone: an unknown product's name."""
    rest = [w for w in normalize(text).split() if w not in _FILLER]
    return " ".join(rest[:5]) or None


_TOPICS = (("repair", ("repair", "broken", "fix", "cracked", "screen", "warranty", "damaged")),
           ("return", ("return", "refund", "exchange", "money back", "send back", "take back",
                       "send it back")),
           ("order", ("order", "pickup", "pick up", "delivery", "reserve", "collect")),
           ("complaint", ("complain", "complaint", "rude", "unhappy", "terrible")),
           ("staff", ("staff", "person", "human", "employee", "someone", "somebody", "anyone",
                      "assistant", "manager", "talk to")))


def _ticket_topic(text: str) -> str:
    low = text.lower()
    for topic, cues in _TOPICS:
        if any(c in low for c in cues):
            return topic
    return "other"
