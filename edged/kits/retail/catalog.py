"""The store's product catalog: seeded from config/data, matched by fuzzy name or SKU.

The rows live in SQLite (stock changes there); a small in-memory index of product lines
answers "which product does this text mean" without a query per keystroke.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edged.agents.kit import read_seed
from edged.agents.slots import normalize, similarity, words
from edged.store import Store

CATEGORY_WORDS = {
    "smartphones": ("phone", "phones", "smartphone", "smartphones", "mobile", "cell", "android",
                    "iphone", "iphones"),
    "laptops": ("laptop", "laptops", "notebook", "notebooks", "chromebook", "ultrabook"),
    "tablets": ("tablet", "tablets"),
    "headphones": ("headphones", "headphone", "earbuds", "earphones", "headset", "buds"),
    "smartwatches": ("watch", "watches", "smartwatch", "smartwatches", "tracker", "wearable"),
    "tvs": ("tv", "tvs", "television", "televisions", "telly"),
    "cameras": ("camera", "cameras", "mirrorless", "camcorder", "dslr"),
    "speakers": ("speaker", "speakers", "soundbar", "bluetooth speaker"),
    "gaming": ("console", "consoles", "gaming", "controller", "gamepad"),
    "monitors": ("monitor", "monitors", "display", "screen"),
    "accessories": ("charger", "cable", "case", "mouse", "keyboard", "adapter", "powerbank"),
    "storage": ("ssd", "drive", "microsd", "sd", "storage", "hdd"),
    "networking": ("router", "wifi", "mesh", "modem"),
    "printers": ("printer", "printers", "scanner"),
}
_STOP = {"for", "to", "the", "a", "of", "and", "with", "in", "my", "me", "i", "it"}


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    brand: str
    model: str
    category: str
    attributes: dict[str, str]
    price: float


@dataclass(frozen=True)
class Line:
    """One product line (a model) and its variants (colors, storage, sizes)."""

    brand: str
    model: str
    category: str
    tokens: tuple[str, ...]
    variants: tuple[Product, ...]


@dataclass(frozen=True)
class LineMatch:
    line: Line
    score: float
    span: tuple[str, ...]  # the words of the text that matched


_GENERIC = {w for names in CATEGORY_WORDS.values() for w in names} | {
    "black", "white", "oled", "ultra", "plus", "pro", "series", "slim", "gen", "lite", "mini",
    "max", "air", "tv", "headphones", "monitor", "mouse", "keyboard", "cable", "charger",
    "stand", "card", "extreme", "portable", "hard", "power", "bank", "edition", "one"}


def _token_weight(tok: str) -> float:
    # Numbers and codes ("9", "m3", "14") tell variants apart but say little on their own;
    # words every category uses ("pro", "tv", "black") say even less.
    if any(c.isdigit() for c in tok):
        return 0.6
    return 0.4 if tok in _GENERIC else 1.0


def _distinctive(tok: str) -> bool:
    """A word that names a product line by itself: "pixel", "s24", not "9" or "black"."""
    has_alpha = any(c.isalpha() for c in tok)
    digits = any(c.isdigit() for c in tok)
    # One letter never names a line alone: the "s" of "what's" is not the Xbox Series S.
    return (has_alpha and len(tok) > 1 and tok not in _GENERIC
            and (not digits or len(tok) >= 3))


class Catalog:
    def __init__(self, products: Sequence[Product], stores: dict[str, str]) -> None:
        self.stores = stores
        self.by_sku = {p.sku.lower(): p for p in products}
        lines: dict[tuple[str, str], list[Product]] = {}
        for p in products:
            lines.setdefault((p.brand, p.model), []).append(p)
        self.lines = [self._line(brand, model, variants)
                      for (brand, model), variants in lines.items()]
        self.vocabulary = {t for line in self.lines for t in line.tokens} | {
            normalize(line.brand).replace(" ", "") for line in self.lines}
        self.brands = {normalize(line.brand) for line in self.lines}

    @staticmethod
    def _line(brand: str, model: str, variants: list[Product]) -> Line:
        toks = [t for t in normalize(model).split() if t not in _STOP]
        return Line(brand, model, variants[0].category, tuple(toks), tuple(variants))

    def match_line(self, text: str) -> LineMatch | None:
        """The product line the text names best, or None when nothing is close enough."""
        sku = self.by_sku.get(text.strip().lower())
        if sku is not None:
            line = next(ln for ln in self.lines if sku in ln.variants)
            return LineMatch(line, 1.0, (text.strip().lower(),))
        plain = normalize(text).split()
        query = [w for w in normalize(text.replace("-", "")).split() + plain
                 + [w[:-1] for w in plain if len(w) > 3 and w.endswith("s")]  # "dots"
                 + [a + b for a, b in itertools.pairwise(plain)]  # "micro sd"
                 if w not in _STOP]
        best: LineMatch | None = None
        for line in self.lines:
            m = self._score(line, query)
            if m and (best is None or m.score > best.score
                      or (m.score == best.score and len(line.tokens) < len(best.line.tokens))):
                best = m
        return best if best and best.score >= 0.55 else None

    def _score(self, line: Line, query: list[str]) -> LineMatch | None:
        total = sum(_token_weight(t) for t in line.tokens)
        hit, span, strong = 0.0, [], False
        joined = _joined_forms(line.tokens)
        for i, tok in enumerate(line.tokens):
            found = _find(tok, query) or next((q for q in query if i in joined.get(q, ())), None)
            if found:
                hit += _token_weight(tok) * (1.0 if found in (tok, *joined) else 0.8)
                span.append(found)
                strong = strong or _distinctive(tok) or found in joined
        brand = normalize(line.brand).replace(" ", "")
        if brand in query:
            span.append(brand)
            strong = strong or bool(span[:-1])
        if not strong and len(span) >= 2 and " ".join(span) in " ".join(line.tokens):
            strong = True  # a phrase of the name: "power bank", "hard drive"
        if not strong:
            return None  # a bare number or a word like "black" is not a product mention
        recall = hit / total
        if recall < 0.25:
            return None  # one word of a long name ("drive" of "My Passport Hard Drive")
        # its category's words and its own variants' words ("46", "rose gold") are no
        # other product's name
        own = set(CATEGORY_WORDS.get(line.category, ())) | _variant_words(line)
        vocab_q = {w for w in query if w in self.vocabulary and w not in own}
        precision = len(vocab_q & set(span)) / len(vocab_q) if vocab_q else 1.0
        bonus = 0.05 * (brand in query) + 0.05 * bool(own & set(query))
        return LineMatch(line, 0.5 * recall + 0.5 * precision + bonus, tuple(span))

    def category_of(self, text: str) -> str | None:
        """The category a text names ("laptops"), else the one category of the lines its
        words point at ("iphone 15" is a smartphone even though we sell no iPhone 15)."""
        return self.category_named(text) or self._category_by_lines(text)

    def category_named(self, text: str) -> str | None:
        low = words(text)
        for category, names in CATEGORY_WORDS.items():
            if any(n in low for n in names):
                return category
        return None

    def _category_by_lines(self, text: str) -> str | None:
        said = {w for w in normalize(text).split() if len(w) > 2 and _distinctive(w)}
        found = {ln.category for ln in self.lines if said & set(ln.tokens)}
        return found.pop() if len(found) == 1 else None

    def name_of(self, line: Line) -> str:
        """The line's full name, brand first ("Google Pixel 9"): it matches the line again
        and says which product was understood."""
        if normalize(line.model).startswith(normalize(line.brand)):
            return line.model
        return f"{line.brand} {line.model}"  # grounded: "Apple Watch Series 10", "SanDisk ..."

    def lines_of_brand(self, text: str) -> list[Line]:
        """Lines of a brand the text names whose name shares a word with it: "Anker
        chargers" is Anker's Nano USB-C Charger, though "chargers" alone names no line."""
        plain = normalize(text).split()
        said = set(plain) | {w[:-1] for w in plain if len(w) > 3 and w.endswith("s")}
        return [ln for ln in self.lines if normalize(ln.brand).replace(" ", "") in said
                and said & (set(ln.tokens) - _STOP)]

    def rivals(self, match: LineMatch) -> list[Line]:
        """Other lines the matched words name just as well: "airpods" is AirPods 4 and
        AirPods Pro 2 alike. None when the text said the matched line's whole name."""
        said = {t for t in match.line.tokens if t in match.span}
        if not said or said == set(match.line.tokens):
            return []
        return [ln for ln in self.lines if ln is not match.line
                and ln.category == match.line.category and said <= set(ln.tokens)]

    def variants(self, line: Line, text: str) -> list[Product]:
        """The variants of ``line`` that fit the attributes mentioned in ``text``."""
        chosen = list(line.variants)
        for key in ("storage", "size", "color", "edition", "pack"):
            wanted = self.attribute_in(line, key, text)
            if wanted is not None:
                chosen = [p for p in chosen if _attr_matches(p, key, wanted)]
        return chosen

    def attribute_in(self, line: Line, key: str, text: str) -> str | None:
        """The value of attribute ``key`` that ``text`` mentions (a color family counts)."""
        norm = " " + normalize(text).replace(" gb", "gb").replace(" tb", "tb") + " "
        norm = re.sub(r"(\d+) ?(?:inch|inches|in)\b", r"\1in", norm)
        values = {p.attributes[key] for p in line.variants if key in p.attributes}
        if key == "color":
            values |= {p.attributes["color_family"] for p in line.variants
                       if "color_family" in p.attributes}
            values |= set(COLOR_WORDS) & set(norm.split())
        for value in sorted(values, key=len, reverse=True):
            if _said(norm, normalize(value)) or _said(norm, normalize(value).replace(" ", "")):
                return value
            bare = re.fullmatch(r"(\d{2,4})gb", normalize(value).replace(" ", ""))
            if key == "storage" and bare and f" {bare.group(1)} " in norm:
                return value  # "midnight 512" next to a line sold in 512GB
            sized = re.fullmatch(r"(\d{2,3})(?:in|mm)", normalize(value).replace(" ", ""))
            if key == "size" and sized and re.search(rf" {sized.group(1)}s? ", norm):
                return value  # "the 55" of a TV sold in 55in

        if key == "color":  # "hazle" is Hazel: a one-word colour name, misspelt
            said = [w for w in norm.split() if len(w) > 3 and w.isalpha()]
            for value in sorted(values):
                if " " not in value and any(similarity(normalize(value), w) >= 0.8
                                            for w in said):
                    return value
        return None

    def storage_said(self, text: str) -> str | None:
        """A storage size the text names ("1tb", "512 GB"), whether or not any variant has it."""
        m = _STORAGE_SAID.search(text)
        return f"{m.group(1)}{m.group(2).upper()}" if m else None


    def sizes_of(self, line: Line) -> set[str]:
        """The bare numbers of a line's sizes and storage ("55" of 55in, "256" of 256GB)."""
        found = set()
        for p in line.variants:
            for key in ("size", "storage"):
                m = re.match(r"(\d+)", p.attributes.get(key, ""))
                if m:
                    found.add(m.group(1))
        return found

    def size_said(self, text: str) -> str | None:
        """A screen or case size the text names ("75 inch", "44mm"), sold or not."""
        m = _SIZE_SAID.search(text)
        if m is None:
            return None
        return f"{m.group(1)}{'mm' if m.group(2).lower() == 'mm' else 'in'}"


_STORAGE_SAID = re.compile(r"\b(\d{1,4}) ?(gb|tb)\b", re.I)
_SIZE_SAID = re.compile(r"\b(\d{2,3}) ?(inch|inches|in|\"|mm)(?![a-z])", re.I)
COLOR_WORDS = ("black", "white", "silver", "gray", "grey", "blue", "green", "pink", "purple",
               "red", "gold", "beige", "navy")


def _variant_words(line: Line) -> set[str]:
    found: set[str] = set()
    for p in line.variants:
        for key, value in p.attributes.items():
            if key != "color_family":
                text = normalize(value)
                found.update(text.split())
                found.update(re.findall(r"\d+", text))
    return found


def _said(norm: str, phrase: str) -> bool:
    """Is ``phrase`` in the normalised text other than negated ("black, not the white")?"""
    for m in re.finditer(rf" {re.escape(phrase)} ", norm):
        if not re.search(r" (?:not|no|except|but not)(?: the| a| an)? ?$", norm[:m.start() + 1]):
            return True
    return False


def _attr_matches(p: Product, key: str, wanted: str) -> bool:
    w = normalize(wanted).replace("grey", "gray")
    value = normalize(p.attributes.get(key, ""))
    family = p.attributes.get("color_family", "") if key == "color" else ""
    return w in (value, family) or w in value.split()


def _joined_forms(tokens: tuple[str, ...]) -> dict[str, range]:
    """"wh1000xm5" names the tokens "wh" "1000xm5"; so does its tail "1000xm5" or "xm5"."""
    forms: dict[str, range] = {}
    for i in range(len(tokens)):
        for j in range(i + 2, len(tokens) + 1):
            forms["".join(tokens[i:j])] = range(i, j)
    for i, tok in enumerate(tokens):
        if any(c.isdigit() for c in tok) and len(tok) >= 5:
            forms[tok[-3:]] = range(i, i + 1)
    return forms


def _find(tok: str, query: Iterable[str]) -> str | None:
    q = list(query)
    if tok in q:
        return tok
    if len(tok) > 3 and not any(c.isdigit() for c in tok):
        near = [w for w in q if len(w) > 3 and similarity(tok, w) >= 0.8]
        if near:
            return near[0]
    # "watch" for "watch7": a word that the model number only extends
    return next((w for w in q if len(w) >= 4 and tok.startswith(w)
                 and tok[len(w):].isdigit()), None)


async def seed_catalog(store: Store, path: Path) -> None:
    """Load the seed file into SQLite once per version of the file (stock resets with it)."""
    data, digest = read_seed(path)
    row = await store.fetchone("SELECT sha256 FROM seed_versions WHERE name = 'catalog'")
    if row is not None and row["sha256"] == digest:
        return
    async with store.transaction() as db:
        await db.execute("DELETE FROM catalog_stock")
        await db.execute("DELETE FROM catalog_products")
        for p in data["products"]:
            await db.execute(
                "INSERT INTO catalog_products (sku, name, brand, model, category, attributes, "
                "price) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (p["sku"], p["name"], p["brand"], p["model"], p["category"],
                 json.dumps(p["attributes"]), float(p["price"])))
            await db.executemany(
                "INSERT INTO catalog_stock (sku, store, quantity) VALUES (?, ?, ?)",
                [(p["sku"], s, int(q)) for s, q in p["stock"].items()])
        await db.execute("INSERT OR REPLACE INTO seed_versions (name, sha256) VALUES (?, ?)",
                         ("catalog", digest))
        await db.execute("DELETE FROM catalog_stores")
        await db.executemany("INSERT INTO catalog_stores (id, name) VALUES (?, ?)",
                             [(s["id"], s["name"]) for s in data["stores"]])


async def load_catalog(store: Store) -> Catalog:
    rows = await store.fetchall("SELECT * FROM catalog_products ORDER BY sku")
    products = [Product(r["sku"], r["name"], r["brand"], r["model"], r["category"],
                        json.loads(r["attributes"]), r["price"]) for r in rows]
    stores = {r["id"]: r["name"] for r in await store.fetchall("SELECT * FROM catalog_stores")}
    return Catalog(products, stores)
