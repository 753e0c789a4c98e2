"""The reply: written by the model from the tool results, or a checked template.

A small model can drop a fact, invent a price or drift off topic. So its text is kept only
if it is non-empty, on topic (it shares words with the facts) and every number in it appears
in the facts; otherwise the tool's own summary is the reply.
"""

from __future__ import annotations

import logging
import re

from edged.agents.config import AgentSpec
from edged.agents.tools import JSON
from edged.errors import EdgedError
from edged.models.contract import PRIORITY_HIGH, PRIORITY_NORMAL, GenerateParams, Inference

log = logging.getLogger(__name__)
_NUM = re.compile(r"\d+(?:[.,:]\d+)*")
_STOP = frozenset((
    "the", "a", "an", "and", "or", "of", "to", "in", "on", "for", "with", "is", "are", "we",
    "you", "your", "our", "it", "this", "that",
))


class ReplyWriter:
    def __init__(self, models: Inference | None) -> None:
        self._models = models

    async def write(self, spec: AgentSpec, text: str, actions: list[JSON]) -> tuple[str, str]:
        """(reply, who wrote it: "model" or "template")."""
        facts = " ".join(str(a["result"].get("summary", "")) for a in actions).strip()
        if not facts:
            return "Done.", "template"
        escalated = spec.escalate == "always" and spec.escalation_model is not None
        if not (spec.model_reply or escalated) or self._models is None:
            return facts, "template"
        if facts.rstrip().endswith("?"):
            return facts, "template"  # a clarifying question is asked as the tool put it
        model = spec.escalation_model if escalated and spec.escalation_model else spec.model
        try:
            gen = await self._models.chat(model, [{"role": "user", "content": _prompt(
                spec, text, facts)}], GenerateParams(
                    max_tokens=spec.reply_max_tokens, temperature=0.2, stop=("\n",),
                    priority=PRIORITY_HIGH if spec.phi else PRIORITY_NORMAL,
                    local_only=spec.phi, origin=f"agent:{spec.name}"))
        except EdgedError as e:
            log.warning("agent %s: the model could not write the reply: %s", spec.name,
                        e.message)
            return facts, "template"
        candidate = gen.text.strip()
        if gen.finish_reason == "stop" and acceptable(candidate, facts, actions, spec.phi):
            return candidate, "model"
        log.debug("agent %s: model reply %r not used", spec.name, candidate[:200])
        return facts, "template"


    async def escalate(self, spec: AgentSpec, text: str) -> str | None:
        """``escalate = "low_confidence"``: a turn the router could not place is answered in
        words by ``escalation_model`` (no tool runs). Kept only if it is whole and has no
        number the request did not have; otherwise None, and the agent asks to rephrase."""
        if spec.escalate != "low_confidence" or spec.escalation_model is None \
                or self._models is None:
            return None
        try:
            gen = await self._models.chat(spec.escalation_model, [
                {"role": "system", "content": f"{spec.instructions}\n{_NO_ACTIONS}"},
                {"role": "user", "content": text}], GenerateParams(
                    max_tokens=ESCALATED_TOKENS, temperature=0.2,
                    priority=PRIORITY_HIGH if spec.phi else PRIORITY_NORMAL,
                    local_only=spec.phi, origin=f"agent:{spec.name}"))
        except EdgedError as e:
            log.warning("agent %s: the escalation model could not answer: %s", spec.name,
                        e.message)
            return None
        candidate = gen.text.strip()
        invented = set(_NUM.findall(candidate)) - set(_NUM.findall(text))
        if gen.finish_reason != "stop" or not candidate or invented:
            log.debug("agent %s: escalated answer %r not used", spec.name, candidate[:200])
            return None
        return candidate


ESCALATED_TOKENS = 256
_NO_ACTIONS = ("Answer in a few sentences. You cannot look anything up, check stock or "
               "prices, book or order anything here; never state a price, a stock level or "
               "a time.")


def _prompt(spec: AgentSpec, text: str, facts: str) -> str:
    return (f"{spec.instructions}\nFacts: {facts}\nCustomer: {text}\n"
            "Answer the customer in one or two short sentences, using only the facts.")


_IDS = re.compile(r"\b[A-Z]-[A-Z0-9]{6,}\b")
_CUSTOMER_VOICE = re.compile(r"\s*(?:i am|i'm|i want|i need|i would|i'd|please|can you|"
                             r"do you|customer:|i have a|i think|i was)", re.I)
# A word with a digit in it ("S24", "M3", "13" of "XPS 13") is part of a name, not a fact:
# a reply that keeps only the product's name has kept no number.
_NAME_NUMBER = re.compile(r"\b[a-z]+\d[a-z\d]*\b|\b\d+[a-z]+\b|(?<=[A-Za-z] )\d{1,2}\b(?![.:]\d)",
                          re.I)


def _fact_text(text: str) -> str:
    """The text without the numbers that belong to names ("Pixel 9", "S24", "256GB")."""
    return _NAME_NUMBER.sub(" ", text.replace(",", ""))
_NEGATIVE = re.compile(r"\b(?:not|no|don't|out of stock|can't|couldn't|sorry|isn't|taken|"
                       r"passed|unavailable)\b", re.I)
# The outcome in the result's own words: a phrase in a tool's summary, and the words one of
# which the reply must use to say the same ("is already taken" -> "taken").
_OUTCOMES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("already taken", ("taken",)),
    ("not a bookable slot", ("not a bookable", "not bookable")),
    ("already passed", ("passed",)),
    ("out of stock", ("out of stock",)),
    ("don't carry", ("don't carry", "do not carry")),
    ("but not in", ("not in",)),
    ("no free slots", ("no free",)),
    ("found no", ("found no", "no in-stock", "no alternative")),
    ("couldn't", ("couldn't", "could not")),
    ("can't", ("can't", "cannot", "can not")),
    ("in stock here", ("in stock", " left")),
    ("booked:", ("booked",)),
    ("free on", ("free", "available")),
    ("asked a staff member", ("staff",)),
)
# A failure's alternatives (free slots, other products) and a quote's sums are in numbers:
# for these the reply must carry every number of the summary.
_ALL_NUMBERS = re.compile(r"already taken|not a bookable|already passed|out of stock|"
                          r"don't carry|no free slots|couldn't|can't|found no|but not in|"
                          r"total \$", re.I)
# A clinic reply never speaks as the patient ("I am very sick", "my prescription").
_PATIENT_VOICE = re.compile(r"\b(?:i am|i'm|i have|i want|i need|i feel|my|me)\b", re.I)


def acceptable(reply: str, facts: str, actions: list[JSON] | None = None,
               phi: bool = False) -> bool:
    """Non-empty, on topic, no number the facts lack, every reference (quote, ticket,
    booking) kept, as positive or negative as the facts are, and the key facts of each
    result kept (``keeps_key_facts``)."""
    summaries = ([str(a["result"].get("summary", "")) for a in actions] if actions
                 else [facts])
    if not keeps_key_facts(reply, summaries, phi):
        return False
    if len(reply) < 8 or len(reply) > 600:
        return False
    fact_numbers = set(_NUM.findall(facts.replace(",", "")))
    if any(n not in fact_numbers for n in _NUM.findall(reply.replace(",", ""))):
        return False
    if not set(_IDS.findall(facts)) <= set(_IDS.findall(reply)):
        return False
    if bool(_NEGATIVE.search(facts)) != bool(_NEGATIVE.search(reply)):
        return False
    if fact_numbers and not set(_NUM.findall(_fact_text(reply))) & set(
            _NUM.findall(_fact_text(facts))):
        return False  # the facts' numbers (stock, prices, times) are the point of the answer
    if _CUSTOMER_VOICE.match(reply):
        return False  # a base model often carries on as the customer
    words = {w for w in re.findall(r"[a-z]+", reply.lower()) if w not in _STOP}
    fact_words = {w for w in re.findall(r"[a-z]+", facts.lower()) if w not in _STOP}
    return len(words & fact_words) >= 2


def keeps_key_facts(reply: str, summaries: list[str], phi: bool) -> bool:
    """Does the reply say what each result says: its outcome in the result's own words,
    and for a failure (the alternatives offered), a quote (its sums) or anything on a PHI
    agent, every number? When in doubt the template is the answer."""
    low = reply.lower().replace("\u2019", "'")
    numbers = set(_NUM.findall(reply.replace(",", "")))
    if phi and _PATIENT_VOICE.search(low):
        return False
    for summary in summaries:
        if summary.rstrip().endswith("?") and summary.strip() not in reply:
            return False  # a clarifying question is never replaced by the model's words
        said = summary.lower().replace("\u2019", "'")
        if any(phrase in said and not any(w in low for w in words)
               for phrase, words in _OUTCOMES):
            return False
        if ((phi or _ALL_NUMBERS.search(said))
                and not set(_NUM.findall(summary.replace(",", ""))) <= numbers):
            return False
    return True
