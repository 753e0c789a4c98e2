"""Intent routing from examples: a sentence encoder's similarity plus lexical similarity.

A sub-1B model picks tools badly when asked to choose (3 of 12 on the bundled model), but
nearest neighbours over examples work. Each agent keeps example requests per intent in
config; a request is scored against them by the cosine of sentence-encoder vectors (meaning:
"move my appointment" is near "reschedule", whatever the words), and by TF-IDF over words,
word pairs and character 4-grams (robust to typos and product codes) plus tool keywords.
The best intent wins if it clears the threshold; a request near no example at all is out of
the agent's scope.
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edged.agents.encoder import Matrix
from edged.errors import ConfigError

Vector = dict[str, float]
KEYWORD_BONUS, KEYWORD_CAP = 0.04, 0.08  # with an encoder: per keyword hit, at most
_STEM = re.compile(r"(?:ing|ed|es|s)$")


@dataclass(frozen=True)
class Intent:
    name: str
    examples: tuple[str, ...]
    keywords: tuple[str, ...] = ()
    reply: str | None = None  # a canned answer (greetings); no tool runs


@dataclass(frozen=True)
class Route:
    intent: str | None
    score: float
    scores: dict[str, float] = field(default_factory=dict)
    nearest: float | None = None  # best encoder cosine to any example (None: no encoder)


def load_intents(path: Path) -> list[Intent]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"agents: cannot read routing examples {path}: {e}") from None
    intents = []
    for name, body in data.get("intents", {}).items():
        examples = tuple(body.get("examples", ()))
        if not examples:
            raise ConfigError(f"{path}: intents.{name}.examples: at least one example needed")
        intents.append(Intent(name, examples, tuple(body.get("keywords", ())), body.get("reply")))
    return intents


def features(text: str) -> Counter[str]:
    toks = [_STEM.sub("", t) if len(t) > 4 else t
            for t in re.findall(r"[a-z0-9']+", text.lower())]
    feats: Counter[str] = Counter(f"w:{t}" for t in toks)
    feats.update(f"b:{a}_{b}" for a, b in itertools.pairwise(toks))
    for t in toks:
        padded = f" {t} "
        feats.update(f"c:{padded[i:i + 4]}" for i in range(max(1, len(padded) - 3)))
    return feats


def _norm(v: Vector) -> Vector:
    n = math.sqrt(sum(x * x for x in v.values())) or 1.0
    return {k: x / n for k, x in v.items()}


def _dot(a: Vector, b: Vector) -> float:
    if len(a) > len(b):
        a, b = b, a
    return sum(x * b.get(k, 0.0) for k, x in a.items())


def _top_mean(values: Sequence[float], k: int = 2) -> float:
    best = sorted(values, reverse=True)[:k]
    return sum(best) / len(best) if best else 0.0


class Router:
    """Scores one agent's intents. ``mask`` takes entities (products, dates) out first, so an
    example about a Pixel also teaches about a Galaxy."""

    def __init__(self, intents: Sequence[Intent], mask: Callable[[str], str],
                 embed_weight: float = 0.6) -> None:
        self.intents = list(intents)
        self._mask = mask
        self._embed_weight = embed_weight
        docs = [(i.name, features(mask(e))) for i in self.intents for e in i.examples]
        df: Counter[str] = Counter(f for _, d in docs for f in d)
        self._idf = {f: math.log((1 + len(docs)) / (1 + n)) + 1 for f, n in df.items()}
        self._examples = [(name, self._vector(d)) for name, d in docs]
        self._keywords = {i.name: tuple(k.lower() for k in i.keywords) for i in self.intents}
        self._names = [i.name for i in self.intents for _ in i.examples]
        self._matrix: Matrix | None = None

    def example_texts(self) -> list[tuple[str, str]]:
        return [(i.name, e) for i in self.intents for e in i.examples]

    def set_embeddings(self, vectors: Matrix) -> None:
        """Unit vectors of ``example_texts()`` (masked), in that order."""
        if vectors.shape[0] != len(self._names):
            raise ValueError("one vector per example expected")
        self._matrix = vectors

    @property
    def embedded(self) -> bool:
        return self._matrix is not None

    def _vector(self, feats: Mapping[str, int]) -> Vector:
        return _norm({f: (1 + math.log(n)) * self._idf.get(f, 0.0) for f, n in feats.items()})

    def lexical(self, text: str) -> dict[str, float]:
        masked = self._mask(text)
        q = self._vector(features(masked))
        sims: dict[str, list[float]] = {i.name: [] for i in self.intents}
        for name, vec in self._examples:
            sims[name].append(_dot(q, vec))
        keyed = self.keywords(text)
        return {name: _top_mean(values) + (keyed[name] if not self.embedded else 0.0)
                for name, values in sims.items()}

    def keywords(self, text: str) -> dict[str, float]:
        """A bonus per intent for its keywords in the text: explicit cues from config
        ("quote", "refund") that count whatever else the sentence resembles."""
        low = " " + " ".join(re.findall(r"[a-z0-9']+", text.lower())) + " "
        scale, cap = (KEYWORD_BONUS, KEYWORD_CAP) if self.embedded else (0.12, 0.3)
        return {name: min(cap, scale * sum(1 for k in keys if f" {k} " in low))
                for name, keys in self._keywords.items()}

    def semantic(self, query: Matrix) -> tuple[dict[str, float], float]:
        """Per intent, the mean of its best two cosines; and the best cosine of all."""
        assert self._matrix is not None
        sims = self._matrix @ query
        per: dict[str, list[float]] = {i.name: [] for i in self.intents}
        for name, sim in zip(self._names, sims.tolist(), strict=True):
            per[name].append(sim)
        return {n: _top_mean(v) for n, v in per.items()}, float(sims.max())

    def route(self, text: str, query: Matrix | None = None) -> Route:
        scores = self.lexical(text)
        nearest = None
        if query is not None and self._matrix is not None:
            sem, nearest = self.semantic(query)
            w = self._embed_weight
            keyed = self.keywords(self._mask(text))
            scores = {n: w * sem[n] + (1 - w) * s + keyed[n] for n, s in scores.items()}
        best = max(scores, key=lambda n: scores[n])
        return Route(best, scores[best], scores, nearest)
