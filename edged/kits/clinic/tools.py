"""The clinic assistant's tools: availability, booking, the patient portal, a human.

Everything here is protected health information: bookings keep the patient's name
encrypted, tickets carry only an opaque reference, and the portal answers only to a valid
signed token.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import sqlite3
import time
import tomllib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from edged.agents import portal
from edged.agents.config import AgentSpec
from edged.agents.kit import Meaning, Override, read_seed
from edged.agents.sessions import Sealer
from edged.agents.slots import (
    normalize,
    parse_date,
    parse_time,
    part_of_day,
    pick_listed,
    similarity,
    words,
)
from edged.agents.tickets import NOT_NOTIFIED, Tickets
from edged.agents.tools import JSON, Limits, Tool, ToolContext, collect, tool
from edged.errors import BadRequest, ConfigError, EdgedError, Unauthorized
from edged.store import Store

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NAMES = dict(zip(DAYS, ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday",
                             "Saturday", "Sunday"), strict=True))
GENERIC_CUES = frozenset(("doctor", "physician", "general"))  # any specialty's, last
GENERALIST = "family medicine"
SPECIALTY_WORDS = {
    "family medicine": ("gp", "family", "general", "doctor", "physician", "checkup",
                        "check-up", "physical"),
    "pediatrics": ("pediatric", "pediatrician", "paediatrician", "child", "kid", "baby",
                   "son", "daughter"),
    "cardiology": ("cardio", "cardiologist", "heart"),
    "dermatology": ("dermatologist", "derm", "skin", "rash", "mole", "acne"),
    "orthopedics": ("orthopedic", "orthopaedic", "orthopedist", "bone", "knee", "joint",
                    "fracture"),
    "dentistry": ("dentist", "dental", "tooth", "teeth", "cleaning"),
    "women's health": ("gynecologist", "gynaecologist", "women", "pap", "obgyn", "prenatal"),
    "mental health": ("therapist", "therapy", "psychiatrist", "counselling", "counseling",
                      "anxiety", "depression"),
    "physiotherapy": ("physio", "physiotherapist", "physical therapy", "rehab"),
    "ophthalmology": ("eye", "eyes", "vision", "ophthalmologist", "optometrist",
                      "optician"),
    "laboratory": ("lab", "blood", "bloodwork", "draw", "test"),
}
Section = Literal["appointments", "results", "prescriptions", "billing"]
Reason = Literal["urgent", "billing", "records", "prescription", "cancel", "other"]

# Safety cues, checked in code before routing and before any pending question (QA G1-G3).
# Patterns match the message lowercased, apostrophes dropped ("can't" -> "cant") and other
# punctuation as spaces, at word boundaries. They err towards escalating: a false alarm
# costs a nurse's call, a miss can cost a life. Keep them specific ("severe bleeding", not
# "severe": "severe acne" is a dermatology booking).
EMERGENCY = "If this is an emergency, call your local emergency number now."
CRISIS = ("If you are thinking about harming yourself, please also contact a local crisis "
          "line now.")
RED_FLAGS = (
    r"chest pains?", r"chest (?:tightness|pressure)", r"crushing chest", r"heart attack",
    r"(?:cant|cannot|can not|couldnt|unable to) breathe?", r"not breathing",
    r"(?:trouble|difficulty|hard|struggling) breathing", r"short(?:ness)? of breath",
    r"stopped breathing", r"choking",
    r"too many (?:pills|tablets)", r"overdos(?:e|ed|ing)", r"poison(?:ed|ing)",
    r"(?:severe|heavy|heavily|lots of|a lot of) bleeding", r"bleeding (?:heavily|badly)",
    r"wont stop bleeding", r"bleeding (?:that )?wont stop",
    r"unresponsive", r"(?:not|isnt|is not|wasnt) responding", r"not waking(?: up)?",
    r"wont wake(?: up)?", r"cant wake (?:him|her|them)", r"unconscious", r"passed out",
    r"collapsed", r"fainted",
    r"strokes?", r"face (?:is )?drooping", r"slurred speech", r"seizures?",
    r"anaphyla\w*", r"allergic reaction", r"throat (?:is )?(?:swelling|closing)", r"ambulance",
    r"(?:this is|its|it is) an emergency", r"medical emergency",
    # standard red-flag signs (triage lists), in the words people use
    r"(?:lips|face|skin) (?:is |are |look |looks |turning |gone |going )?(?:blue|grey|gray)",
    r"(?:cant|cannot|can not|unable to) (?:catch (?:my|his|her|their) breath|swallow|speak|talk|"
    r"move (?:my|his|her) (?:arm|leg|face)|feel (?:my|his|her) (?:arm|leg|face))",
    r"(?:gasping|wheezing|struggling) for (?:air|breath)", r"turning blue",
    r"(?:vomit\w*|throw\w* up|threw up|cough\w* up|spitting) (?:up )?blood",
    r"blood in (?:his|her|my|their) (?:vomit|stool|poo|poop)", r"coffee grounds?",
    r"(?:swallowed|ate|drank|took) (?:a |some |the |his |her |my |all |like )?(?:\w+ ){0,3}"
    r"(?:pills|tablets|meds|medication|bleach|battery|batteries|magnets?|detergent|"
    r"cleaning|poison|antifreeze)",
    r"(?:first|another) (?:seizure|fit)", r"(?:having|had) a fit", r"fitting",
    r"(?:worst|thunderclap) headache", r"stiff neck", r"rash (?:that )?(?:doesnt|does not|"
    r"wont|will not) fade", r"(?:floppy|limp|lethargic) (?:baby|infant|newborn)",
    r"(?:baby|babys|infant) (?:is |isnt |hasnt |has not )?(?:not )?(?:moving|moved|breathing|"
    r"waking|feeding)", r"hard to wake", r"(?:wont|will not|cant|cannot) wake",
    r"(?:not|isnt|hasnt been) making sense", r"(?:slurr\w*|garbled) (?:speech|words|talking)",
    r"(?:face|mouth) (?:is )?(?:drooping|droopy|lopsided)",
    r"(?:lost|losing|cant feel) (?:the )?(?:feeling|sight|vision)",
    r"(?:suddenly|sudden) (?:cant|cannot|can not|couldnt) (?:see|walk|talk|speak|stand)",
    r"hit by a (?:car|bus|truck|van)", r"(?:car|motorbike|bike) (?:crash|accident)",
    r"(?:bone|bones) (?:sticking|poking) out", r"(?:deep|bad) (?:cut|gash|wound)",
    r"(?:bad|severe|serious) burns?", r"electric shock", r"(?:nearly )?drown\w*",
    r"(?:hes|shes|theyre|he is|she is|they are) (?:not|barely) (?:breathing|responding|"
    r"conscious|awake)", r"(?:foaming|frothing) at the mouth", r"carbon monoxide",
    r"(?:waters|water) broke", r"(?:threatening|threatened) to (?:kill|hurt|stab|shoot)",
    r"(?:hit|hits|hitting|beat|beats|beating|attacked|attacking) (?:me|her|him|them|my)\b",
    r"(?:knife|gun|weapon)",
    r"(?:lips|lip|tongue|throat|face|mouth) (?:are |is |has |have |got |gone |going |all )?"
    r"(?:swollen|swelling|swelled|massive|huge|puffy|puffed up|blown up)",
)
SELF_HARM = (
    r"suicid\w*", r"kill(?:ing)? myself", r"end(?:ing)? (?:my|it all)(?: own)?(?: life)?",
    r"tak(?:e|ing) my (?:own )?life", r"(?:hurt|harm|hurting|harming|cutting) myself",
    r"self harm\w*", r"(?:want|wanting) to die", r"better off dead",
    # passive ideation and farewells: not being here, saying goodbye
    r"(?:wont|will not|not going to|wouldnt) be (?:here|around|alive)(?: \w+){0,3}",
    r"(?:saying|say|said) (?:my )?goodbyes?", r"goodbye (?:note|letter|message|post)",
    r"end it(?: all)?", r"(?:dont|do not) want to (?:be alive|live|wake up|be here)",
    r"(?:no|no point|whats the point) (?:point )?(?:in )?(?:living|going on|being alive)",
    r"(?:tired|sick) of (?:being alive|living|life)", r"(?:hurt|harm|cut|burn)(?:ing)? "
    r"(?:myself|themselves|himself|herself)", r"on purpose",
    r"(?:kill|killing|hang|hanging|drown|drowning) (?:himself|herself|themselves|myself)",
    r"(?:better off|be better) without me", r"(?:nobody|no one|noone) would (?:miss|notice|care)",
    r"(?:take|taking|took) (?:all|every one of) (?:my|his|her|the) (?:pills|tablets|meds)",
    r"(?:saving|saved|stockpil\w*|hoard\w*) (?:up )?(?:my |his |her )?(?:pills|tablets|meds|"
    r"sleeping pills|painkillers)",
)
_BOOKED = (r"(?:appt|appointment|booking|visit|slot|blood test|check ?up|session|physio|"
           r"scan|consult\w*)")
CANCEL = (r"cancel\w*", r"reschedul\w*", r"re schedule", r"postpon\w*",
          # a change to an appointment the patient already has
          rf"(?:move|change|switch|shift|swap|rebook|bring forward|push back)\b(?: \w+){{0,4}} "
          rf"(?:my|our|his|her|the|their) (?:\w+ )?{_BOOKED}",
          rf"(?:my|our|his|her|the) (?:\w+ )?{_BOOKED} (?:moved|changed|pushed back)",
          r"(?:wont|will not|cant|cannot|can not|not going to|unable to) (?:be able to )?"
          r"make (?:it|my|the|our|his|her)\b",
          rf"(?:bring|move|push|put) (?:my|our|his|her|the) (?:\w+ )?{_BOOKED} "
          r"(?:forward|back|earlier|later)",
          r"take (?:me|us|him|her|them) off", rf"different (?:day|time) for (?:my|the) "
                                               rf"(?:\w+ )?{_BOOKED}")


@dataclass(frozen=True)
class Exemplars:
    threshold: float | None  # a group that decides alone (cancel); None: see SafetyRule
    exemplars: tuple[str, ...]


@dataclass(frozen=True)
class SafetyRule:
    """Urgent when a clause's mean best-five cosine to the urgent exemplars beats its
    mean best-five cosine to the routine ones by at least ``margin``: nearness to an
    emergency counts only against nearness to the ordinary messages that share its words
    ("had a heart attack last year"). Calibrated on the dev split of the blind safety set
    (scripts/bench/safety_calibrate.py)."""

    margin: float
    floor: float  # and at least this near an emergency: a vague fragment is near nothing
    veto: float  # a cue word is overruled only when every clause is this much nearer routine


def load_exemplars(*paths: Path) -> dict[str, Exemplars]:
    """Exemplar groups from TOML files, merged by name (thresholds from where given)."""
    merged: dict[str, Exemplars] = {}
    for path in paths:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"clinic kit: cannot read {path}: {e}") from None
        for name, g in data.items():
            if name == "rule":
                continue
            had = merged.get(name, Exemplars(None, ()))
            threshold = g.get("threshold", had.threshold)
            merged[name] = Exemplars(None if threshold is None else float(threshold),
                                     had.exemplars + tuple(g["exemplars"]))
    return merged


def load_rule(path: Path) -> SafetyRule:
    try:
        rule = tomllib.loads(path.read_text())["rule"]
        return SafetyRule(float(rule["margin"]), float(rule["floor"]), float(rule["veto"]))
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"clinic kit: {path}: [rule] needs margin, floor and veto "
                          f"({e})") from None


@dataclass(frozen=True)
class Provider:
    id: str
    name: str
    specialty: str
    days: tuple[str, ...]
    start: str
    end: str
    slot_minutes: int

    def slots(self, day: dt.date) -> list[str]:
        if DAYS[day.weekday()] not in self.days:
            return []
        at = dt.datetime.combine(day, dt.time.fromisoformat(self.start))
        end = dt.datetime.combine(day, dt.time.fromisoformat(self.end))
        out = []
        while at + dt.timedelta(minutes=self.slot_minutes) <= end:
            out.append(at.strftime("%H:%M"))
            at += dt.timedelta(minutes=self.slot_minutes)
        return out


QUESTIONS = {
    "provider": "Which doctor or kind of appointment would you like?",
    "date": "Which day would suit you?",
    "time": "What time would you like?",
    "patient_name": "May I have the patient's full name?",
    "section": "Would you like your appointments, results, prescriptions or billing?",
}


class ClinicTools:
    handoff = "escalate_to_human"

    def __init__(self, spec: AgentSpec, store: Store, providers: list[Provider],
                 patients: dict[str, JSON], tickets: Tickets, portal_key: bytes,
                 sealer: Sealer, clock: Callable[[], dt.datetime] = dt.datetime.now,
                 groups: Mapping[str, Exemplars] | None = None,
                 rule: SafetyRule | None = None) -> None:
        self._spec = spec
        self._groups = dict(groups or {})
        self._rule = rule
        forms = sorted({f for p in providers for f in (p.name, *normalize(p.name).split()[-1:])},
                       key=len, reverse=True)  # full names before surnames
        self._provider_names = re.compile(
            r"\b(?:dr\.? |doctor )?(?:" + "|".join(map(re.escape, forms)) + r")\b", re.I
        ) if forms else None
        self._store = store
        self.providers = providers
        self._patients = patients
        self._tickets = tickets
        self._key = portal_key
        self._sealer = sealer
        self._clock = clock

    def tools(self) -> list[Tool]:
        return collect(self)

    def exemplars(self) -> Mapping[str, Sequence[str]]:
        return {name: group.exemplars for name, group in self._groups.items()}

    def override(self, text: str, meaning: Meaning) -> Override | None:
        """Red flags and self-harm, by meaning or by cue, escalate urgently in every turn;
        cancel or reschedule (which no tool can do) hands over to staff instead of ever
        booking."""
        urgent, routine = self._urgent(meaning), self._routine(meaning)
        if (_cue(SELF_HARM, text) and not routine) or urgent == "self_harm":
            return Override("escalate_to_human", {"reason": "urgent"}, (EMERGENCY, CRISIS))
        if (_cue(RED_FLAGS, text) and not routine) or urgent == "red_flag":
            return Override("escalate_to_human", {"reason": "urgent"}, (EMERGENCY,))
        asked = self.unknown_specialty(text)
        if asked and not self.find_providers(text):
            return Override(None, {}, (self._no_provider(f"a {asked.rstrip('s')}")["summary"],))
        cancel = self._groups.get("cancel")
        if _cue(CANCEL, text) or (cancel is not None and cancel.threshold is not None
                                  and meaning.near("cancel", cancel.threshold)):
            return Override("escalate_to_human", {"reason": "cancel"})
        return None

    def _routine(self, meaning: Meaning) -> bool:
        """Is every clause clearly nearer to routine messages than to any emergency (a
        heart attack last year, "these bills will give me a heart attack")? Then a cue word
        alone does not escalate. With no encoder, never: cues decide."""
        if self._rule is None or not meaning.clauses:
            return False
        return all(c.get("routine", -1.0) - max(c.get("red_flag", -1.0),
                                                c.get("self_harm", -1.0)) >= self._rule.veto
                   for c in meaning.clauses)

    def _urgent(self, meaning: Meaning) -> str | None:
        """The urgent group a clause comes near (nearer than to routine), if any."""
        if self._rule is None:
            return None
        for c in meaning.clauses:
            red, harm = c.get("red_flag", -1.0), c.get("self_harm", -1.0)
            near = max(red, harm)
            if near >= self._rule.floor and near - c.get("routine", 1.0) >= self._rule.margin:
                return "self_harm" if harm >= red else "red_flag"
        return None

    def find_providers(self, text: str) -> list[Provider]:
        """Providers a text names: by name ("Dr. Patel", "patel") or by specialty."""
        toks = words(text)
        by_name = [p for p in self.providers if any(
            _same_name(w, n) for w in toks if len(w) > 2
            for n in normalize(p.name).split()[1:] if n not in ("dr", "nurse"))]
        if by_name:
            return by_name
        low = " " + normalize(text) + " "
        said = [(specialty, [c for c in cues if f" {c} " in low or f" {c}s " in low])
                for specialty, cues in SPECIALTY_WORDS.items()]
        said = [(sp, cues) for sp, cues in said if cues or f" {sp} " in low]
        # "kids doctor" is pediatrics: a specific cue wins over "doctor"
        specific = [sp for sp, cues in said if set(cues) - GENERIC_CUES or not cues]
        # a specialist wins over the generalist ("my gp referred me to the heart doctor")
        specialist = [sp for sp in specific if sp != GENERALIST]
        ranked = specialist or specific or [sp for sp, _ in said]
        return [p for p in self.providers if p.specialty == ranked[0]] if ranked else []

    def unknown_specialty(self, text: str) -> str | None:
        """A specialist the text asks for that no provider here is ("a neurologist")."""
        m = re.search(r"\b([a-z]+(?:ologist|ology|iatrist|iatrician|ician|opedist|urgeon)s?)"
                      r"\b", text.lower())
        if m is None or self.find_providers(m.group(1)):
            return None
        return m.group(1)

    async def _taken(self, provider_ids: list[str], day: dt.date) -> set[tuple[str, str]]:
        marks = ",".join("?" * len(provider_ids))
        rows = await self._store.fetchall(
            f"SELECT provider_id, start FROM clinic_bookings WHERE provider_id IN ({marks}) "
            "AND start LIKE ?", [*provider_ids, f"{day.isoformat()}T%"])
        return {(r["provider_id"], r["start"][11:16]) for r in rows}

    async def free_slots(self, providers: list[Provider], day: dt.date,
                         part: str | None = None) -> list[JSON]:
        now = self._clock()
        taken = await self._taken([p.id for p in providers], day)
        out = []
        for p in providers:
            for hhmm in p.slots(day):
                if (p.id, hhmm) in taken or _part(hhmm) != (part or _part(hhmm)):
                    continue
                if dt.datetime.combine(day, dt.time.fromisoformat(hhmm)) <= now:
                    continue
                out.append({"provider": p.name, "provider_id": p.id, "date": day.isoformat(),
                            "time": hhmm})
        return sorted(out, key=lambda s: (s["time"], s["provider"]))

    @tool
    async def check_appointment_availability(
        self, ctx: ToolContext, provider: Annotated[str, Limits(max_length=80)] | None = None,
        date: Annotated[str, Limits(max_length=10)] | None = None,
        part_of_day: Literal["morning", "afternoon", "evening"] | None = None,
    ) -> JSON:
        """List free appointment slots with a provider or specialty on a day.

        Args:
            provider: a provider's name or a specialty, e.g. Dr. Patel or dermatology
            date: the day, YYYY-MM-DD
            part_of_day: morning, afternoon or evening

        Keywords: available, availability, free, openings, slots, when, schedule, appointment
        """
        providers = self.find_providers(provider) if provider else list(self.providers)
        if not providers:
            return self._no_provider(provider or "")
        who = provider or "any provider"
        if date:
            slots = await self.free_slots(providers, _day(date), part_of_day)
            if not slots:
                return await self._none_that_day(providers, _day(date), part_of_day, who)
        else:
            slots = await self._first_free(providers, self._clock().date(), part_of_day)
        if not slots:
            return {"found": False, "provider": who, "date": date, "slots": [],
                    "summary": f"There are no free slots for {who} in the next two weeks."}
        shown = slots[:6]
        times = ", ".join(f"{s['time']} with {s['provider']}" for s in shown)
        return {"found": True, "provider": who, "date": shown[0]["date"], "slots": shown,
                "summary": f"Free on {_nice(shown[0]['date'])}: {times}."}

    async def _first_free(self, providers: list[Provider], start: dt.date,
                          part: str | None, days: int = 14) -> list[JSON]:
        for i in range(days):
            slots = await self.free_slots(providers, start + dt.timedelta(days=i), part)
            if slots:
                return slots
        return []

    async def _none_that_day(self, providers: list[Provider], day: dt.date,
                             part: str | None, who: str) -> JSON:
        """Nothing free that day: say which days they work and the next free ones."""
        works = sorted({d for p in providers for d in p.days}, key=DAYS.index)
        off = DAYS[day.weekday()] not in works
        nxt: list[JSON] = []
        at = day + dt.timedelta(days=1)
        while len({s["date"] for s in nxt}) < 2 and at <= day + dt.timedelta(days=14):
            found = await self.free_slots(providers, at, part)
            nxt.extend(found[:3])
            at += dt.timedelta(days=1)
        days_said = ", ".join(_DAY_NAMES[d] for d in works)
        why = (f"{who} does not work on {_DAY_NAMES[DAYS[day.weekday()]]}s (works "
               f"{days_said})" if off else f"{who} has no free slots on {_nice(day.isoformat())}")
        offer = "; ".join(f"{_nice(s['date'])} at {s['time']} with {s['provider']}"
                          for s in nxt[:4])
        return {"found": False, "provider": who, "date": day.isoformat(), "slots": nxt[:4],
                "works": works,
                "summary": f"Sorry, {why}. The next free slots: {offer}." if offer
                           else f"Sorry, {why}, and there is nothing free soon after."}

    def _no_provider(self, asked: str) -> JSON:
        specialties = sorted({p.specialty for p in self.providers})
        return {"found": False, "provider": asked,
                "summary": f"We don't have {asked} at this clinic. Our specialties are: "
                           f"{', '.join(specialties)}."}

    @tool
    async def book_appointment(
        self, ctx: ToolContext, provider: Annotated[str, Limits(max_length=80)],
        date: Annotated[str, Limits(max_length=10)], time: Annotated[str, Limits(max_length=5)],
        patient_name: Annotated[str, Limits(max_length=80)],
    ) -> JSON:
        """Book an appointment slot for a patient; a slot is never booked twice.

        Args:
            provider: a provider's name or a specialty
            date: the day, YYYY-MM-DD
            time: the start time, HH:MM (24 hours)
            patient_name: the patient's full name

        Keywords: book, schedule, make, appointment, reserve, see the doctor, set up
        """
        day, providers = _day(date), self.find_providers(provider)
        if _at(day, time) <= self._clock():
            return {"booked": False, "date": date, "time": time,
                    "summary": f"{time} on {_nice(date)} has already passed; please pick a "
                               "later time."}
        candidates = [p for p in providers if time in p.slots(day)]
        if not candidates:
            return await self._no_such_slot(ctx, providers, day, time, provider)
        for p in candidates:
            booked = await self._insert(p, day, time, patient_name, ctx.session_id)
            if booked:
                return {"booked": True, "booking": booked, "provider": p.name,
                        "date": date, "time": time,
                        "summary": f"Booked: {p.name} on {_nice(date)} at {time} "
                                   f"(confirmation {booked})."}
        for p in candidates:  # a retry whose answer was lost finds its own booking
            mine = await self._booked_by(p, day, time, patient_name, ctx.session_id)
            if mine:
                return {"booked": True, "booking": mine, "provider": p.name, "date": date,
                        "time": time, "summary": f"You're already booked: {p.name} on "
                                                 f"{_nice(date)} at {time} (confirmation {mine})."}
        return await self._no_such_slot(ctx, providers, day, time, provider, taken=True)

    async def _insert(self, p: Provider, day: dt.date, hhmm: str, name: str,
                      session: str) -> str | None:
        booking = f"B-{uuid.uuid4().hex[:8].upper()}"
        start = f"{day.isoformat()}T{hhmm}"
        sealed = self._sealer.seal(json.dumps({"name": name, "session": session}).encode(),
                                   booking.encode())
        try:
            async with self._store.transaction() as db:
                await db.execute(
                    "INSERT INTO clinic_bookings (id, provider_id, start, created, patient) "
                    "VALUES (?, ?, ?, ?, ?)", (booking, p.id, start, time.time(), sealed))
        except sqlite3.IntegrityError:  # UNIQUE (provider_id, start): someone was faster
            return None
        return booking

    async def _booked_by(self, p: Provider, day: dt.date, hhmm: str, name: str,
                         session: str) -> str | None:
        """The slot's booking if this session booked it for this patient (sealed, so the
        comparison happens here, never in SQL)."""
        row = await self._store.fetchone(
            "SELECT id, patient FROM clinic_bookings WHERE provider_id = ? AND start = ?",
            (p.id, f"{day.isoformat()}T{hhmm}"))
        if row is None:
            return None
        held = json.loads(self._sealer.open(row["patient"], row["id"].encode()))
        same = held.get("session") == session and held.get("name") == name
        return str(row["id"]) if same else None

    async def _no_such_slot(self, ctx: ToolContext, providers: list[Provider], day: dt.date,
                            hhmm: str, asked: str, taken: bool = False) -> JSON:
        if not providers:
            return {"booked": False, "summary": f"I couldn't find a provider called {asked}."}
        free = (await self.free_slots(providers, day))[:4]
        times = ", ".join(f"{s['time']} with {s['provider']}" for s in free) or "none that day"
        why = "is already taken" if taken else "is not a bookable slot"
        return {"booked": False, "taken": taken, "date": day.isoformat(), "time": hhmm,
                "slots": free,
                "summary": f"{hhmm} on {_nice(day.isoformat())} {why}. Free slots: {times}."}

    @tool
    async def access_patient_portal(self, ctx: ToolContext, section: Section) -> JSON:
        """Show the signed-in patient's appointments, results, prescriptions or billing.

        Args:
            section: which part of the record

        Keywords: my results, test results, records, prescriptions, refill, bill, portal
        """
        try:
            ref = portal.verify(self._key, ctx.token)
        except Unauthorized as e:
            return {"authorized": False, "reason": e.code,
                    "summary": f"I can't open the patient portal: {e.message}. Please sign in "
                               "at the front desk or the clinic app to get a portal token."}
        patient = self._patients.get(ref)
        if patient is None:
            return {"authorized": False, "reason": "unknown_patient",
                    "summary": "I can't find a record for this portal token."}
        return {"authorized": True, "section": section, **self._section(patient, section)}

    def _section(self, patient: JSON, section: str) -> JSON:
        today = self._clock().date()
        if section == "results":
            items = patient.get("results", [])
            text = "; ".join(f"{r['test']}: {r['value']} ({r['status']})" for r in items)
            return {"items": items, "summary": f"Your results: {text or 'none on file'}."}
        if section == "prescriptions":
            items = patient.get("prescriptions", [])
            text = "; ".join(f"{r['drug']}, {r['refills']} refills left" for r in items)
            return {"items": items, "summary": f"Your prescriptions: {text or 'none'}."}
        if section == "billing":
            return {"balance": patient.get("balance", 0.0),
                    "summary": f"Your balance is ${patient.get('balance', 0.0):.2f}."}
        items = [{"provider": a["provider"], "when": _relative(a["when"], today)}
                 for a in patient.get("appointments", [])]
        text = "; ".join(f"{a['when']} with {a['provider']}" for a in items)
        return {"items": items, "summary": f"Your appointments: {text or 'none booked'}."}

    @tool
    async def escalate_to_human(self, ctx: ToolContext, reason: Reason) -> JSON:
        """Hand the conversation to clinic staff: urgent symptoms, billing, records, anything.

        Args:
            reason: why a person is needed

        Keywords: nurse, staff, person, human, someone, emergency, urgent, speak, call me
        """
        # Only an opaque reference leaves the box; staff look the session up locally.
        reference = hashlib.sha256(f"{ctx.agent}:{ctx.session_id}".encode()).hexdigest()[:16]
        priority = "urgent" if reason == "urgent" else "normal"
        advice = f" {EMERGENCY}" if reason == "urgent" else ""
        try:
            ticket = await self._tickets.open(ctx.agent, "handoff",
                                              {"reference": reference, "priority": priority})
        except EdgedError as e:  # outbox full: the audit keeps e.message, the person gets words
            return {"ticket": None, "reason": reason, "notified": False, "detail": e.message,
                    "must_say": [EMERGENCY] if reason == "urgent" else [],
                    "summary": f"{NOT_NOTIFIED}{advice}"}
        before = ("I can't cancel or reschedule appointments here, so "
                  if reason == "cancel" else "")
        return {"ticket": ticket, "reason": reason, "notified": True,
                "must_say": [EMERGENCY] if reason == "urgent" else [],
                "summary": f"{before}I've asked a staff member to contact you (ticket "
                           f"{ticket}).{advice}"}

    # -- dialogue hooks (edged/agents/kit.py)

    def question(self, tool_name: str, slot: str) -> str | None:
        return QUESTIONS.get(slot)

    def instead(self, tool_name: str, args: JSON, missing: list[str], text: str,
                state: JSON) -> tuple[str, JSON] | None:
        """A booking with no day or time yet shows the free slots first: the patient picks
        one of them, and is asked their name only once the slot is known."""
        if (tool_name != "book_appointment" or not args.get("provider")
                or not ({"date", "time"} & set(missing))):
            return None
        wanted = {k: args[k] for k in ("provider", "date") if args.get(k)}
        part = self._part_wanted(text, state)
        if part:
            wanted["part_of_day"] = part
        return "check_appointment_availability", wanted

    def _part_wanted(self, text: str, state: JSON) -> str | None:
        """The part of day the text says, or the one asked before unless the text turns to
        another provider ("same time" keeps it whatever)."""
        said = part_of_day(text)
        if said:
            return said
        same = re.search(r"\bsame (?:time|day|slot)\b", text.lower()) is not None
        kept: str | None = state.get("part_of_day")
        return kept if same or not self.find_providers(_without_name(text)) else None

    def continues(self, last_tool: str, text: str, state: JSON) -> str | None:
        """After free slots were listed, a time or a name picks one: that is a booking."""
        if last_tool == "check_appointment_availability" and (
                parse_time(text, bare=True) or _patient_name(text)):
            return "book_appointment"
        return None


    def extract(self, tool_name: str, text: str, state: JSON) -> JSON:
        today = self._clock().date()
        name = _patient_name(text)
        about = _without_name(text)  # "Omar Haddad" is not Dr. Haddad
        found = self.find_providers(about)
        if re.search(r"\b(?:other|another|different)\b", about.lower()) and len(found) > 1:
            # "the other family doctor": not the one we were talking about
            found = [p for p in found if p.name != state.get("provider")] or found
            found = found[:1] if state.get("provider") else found
        provider = _provider_label(found, about) or state.get("provider")
        day = parse_date(text, today)
        args: JSON = {"provider": provider, "date": day.isoformat() if day else state.get("date")}
        if tool_name == "check_appointment_availability":
            args["part_of_day"] = self._part_wanted(text, state)
            if not found and day is None:  # a fresh question, not a follow-up
                args["date"] = state.get("date") if state.get("provider") else None
            return args
        if tool_name == "book_appointment":
            answering = bool(state.get("pending")) or state.get("last_tool") is not None
            args["time"] = parse_time(text, bare=answering) or state.get("time")
            args["patient_name"] = name or state.get("patient_name")
            return self._slot_listed(args, text, state, named=bool(found))
        return self._other_args(tool_name, text, args)

    @staticmethod
    def _slot_listed(args: JSON, text: str, state: JSON, named: bool) -> JSON:
        """A slot picked from the ones just listed ("9am is good", "the latest one") is
        that slot: its provider and day, not the specialty asked."""
        listed = state.get("listed") or []
        labels = [f"{s['time']} {s['provider']}" for s in listed]
        picked = pick_listed(text, labels) if not parse_time(text) else None
        if picked is not None:
            args["time"] = listed[picked]["time"]
        same = [s for s in listed if s["time"] == args.get("time")
                and (named or not args.get("date") or s["date"] == args["date"])]
        if same and len({s["provider"] for s in same}) == 1 and not named:
            args["provider"], args["date"] = same[0]["provider"], same[0]["date"]
        return args

    @staticmethod
    def _other_args(tool_name: str, text: str, args: JSON) -> JSON:
        if tool_name == "access_patient_portal":
            return {"section": _section_of(text)}
        if tool_name == "escalate_to_human":
            return {"reason": _reason_of(text)}
        return {}

    def check(self, tool_name: str, args: JSON) -> bool:
        if args.get("provider") and not self.find_providers(str(args["provider"])):
            return False
        if args.get("date"):
            try:
                if _day(str(args["date"])) < self._clock().date():
                    return False
            except BadRequest:
                return False
        return True

    def remember(self, tool_name: str, args: JSON, result: JSON, state: JSON) -> None:
        if result.get("slots"):  # what "9am" or "the latest one" picks from next
            state["listed"] = [{k: s[k] for k in ("provider", "date", "time")}
                               for s in result["slots"]]
        for key in ("provider", "date", "time", "patient_name"):
            if args.get(key):
                state[key] = args[key]
        if tool_name == "check_appointment_availability":  # what "same time" keeps
            state["part_of_day"] = args.get("part_of_day")
        if result.get("booked"):
            state.pop("time", None)

    def mentions(self, text: str) -> bool:
        today = self._clock().date()
        return bool(parse_date(text, today) or parse_time(text) or part_of_day(text)
                    or self.find_providers(text) or _section_of(text))

    def mask(self, text: str) -> str:
        """Providers' names out ("Nurse Practitioner Johnson" asks for no nurse), days and
        times marked."""
        today = self._clock().date()
        out = self._provider_names.sub("the provider", text) if self._provider_names else text
        if parse_date(text, today):
            out += " DATE"
        if parse_time(text):
            out += " TIME"
        return out


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"arguments.date: {text!r} is not a date (YYYY-MM-DD)") from None


def _at(day: dt.date, hhmm: str) -> dt.datetime:
    try:
        return dt.datetime.combine(day, dt.time.fromisoformat(hhmm))
    except ValueError:
        raise BadRequest(f"arguments.time: {hhmm!r} is not a time (HH:MM)") from None


def _nice(iso: str) -> str:
    return dt.date.fromisoformat(iso).strftime("%A %B %d").replace(" 0", " ")


def _part(hhmm: str) -> str:
    hour = int(hhmm[:2])
    return "morning" if hour < 12 else "afternoon" if hour < 17 else "evening"


def _relative(when: str, today: dt.date) -> str:
    offset, hhmm = when.split()
    return f"{(today + dt.timedelta(days=int(offset[:-1]))).isoformat()} {hhmm}"


def _provider_label(found: list[Provider], text: str) -> str | None:
    """The provider's name when the text named one, else the specialty it asked for."""
    if not found:
        return None
    if len(found) == 1:  # "the skin doctor" is Dr. Schmidt: the one who does it
        return found[0].name
    toks = words(text)
    named = [p for p in found if any(similarity(w, n) >= 0.85 for w in toks
                                     for n in normalize(p.name).split()[-1:])]
    return named[0].name if named else found[0].specialty


_NAME_WORD = r"[A-Za-z][a-z]*(?:['-][A-Za-z][a-z]+)?"
_FULL_NAME = rf"({_NAME_WORD}(?: {_NAME_WORD}){{1,2}})"
_NOT_NAMES = frozenset((
    "dr", "doctor", "nurse", "monday", "tuesday", "wednesday", "thursday", "friday",
    "saturday", "sunday", "today", "tomorrow", "morning", "afternoon", "evening", "the",
    "my", "a", "an", "me", "him", "her", "book", "please", "thanks", "next", "this", "at",
    "on", "with", "and", "for", "is", "it", "ok", "okay", "yes", "name", "same", "appointment",
))


def _same_name(said: str, name: str) -> bool:
    """A typo of a name ("shmidt", "nguyn") is the name; a short word must be exact
    ("same" is not Sam)."""
    if len(said) < 5 or len(name) < 5:
        return said == name
    return similarity(said, name) >= 0.85


def _without_name(text: str) -> str:
    name = _patient_name(text)
    return text.replace(name, " ") if name else text


def _patient_name(text: str) -> str | None:
    """The patient's full name: after "my name is", "name:", "for", "I'm"; before "here";
    or a capitalised name that ends a clause ("..., Harold Finch.") or is the whole
    message. Words that are days, titles or request words are never a name."""
    cap = r"([A-Z][a-z]+(?:['-][A-Za-z][a-z]+)?(?: [A-Z][a-z]*(?:['-][A-Za-z][a-z]+)?){1,2})"
    cues = (rf"(?i:my name is|my names|my name's|name is|name's|name:|patient|name)\s+"
            rf"{_FULL_NAME}",
            rf"(?:I am|I'm|Im|it's for|its for|for my \w+,?|for)\s+{cap}",
            rf"{cap}\s+(?i:here)\b",
            rf"(?:^|[,.;:]\s*){cap}\s*[.!]?\s*$",
            rf"\bfor\s+{_FULL_NAME}\s*[.!]?\s*$",  # "... for ben adeyemi" ends a booking
            *([rf",\s*{_FULL_NAME}\s*[.!]?\s*$"] if parse_time(text) else []))
    for cue in cues:
        for m in re.finditer(cue, text.strip()):
            name = _clean_name(m.group(1))
            if name and not _clinic_words(name):
                return name
    return None


def _clinic_words(name: str) -> bool:
    """Does a would-be name hold words of a request ("blood work", "skin check")?"""
    low = set(name.lower().split())
    cues = {c for words_ in SPECIALTY_WORDS.values() for c in words_}
    cues |= {c for _, words_ in _SECTIONS for c in words_}
    cues |= {"work", "check", "exam", "visit", "test", "shot", "scan", "review", "follow"}
    return bool(low & cues)


def _clean_name(found: str) -> str | None:
    parts = found.split()
    while parts and parts[-1].lower() in _NOT_NAMES:
        parts.pop()
    if len(parts) < 2 or any(p.lower() in _NOT_NAMES for p in parts):
        return None
    return " ".join(parts)


_SECTIONS = (("results", ("result", "lab", "test", "blood work", "bloodwork", "report",
                          "cholesterol", "glucose", "a1c", "x-ray", "scan", "levels")),
             ("prescriptions", ("prescription", "refill", "medication", "medicine", "pill",
                                "meds", "drug", "pharmacy")),
             ("billing", ("bill", "balance", "owe", "payment", "pay", "invoice", "charge",
                          "amount due", "account")),
             ("appointments", ("appointment", "appt", "visit", "booking", "booked",
                               "scheduled", "upcoming")))


def _has_cue(text: str, cues: tuple[str, ...]) -> bool:
    """A cue at a word start ("form" is not in "metformin"; "result" is in "results")."""
    low = " " + " ".join(re.findall(r"[a-z0-9'-]+", text.lower())) + " "
    return any(f" {c}" in low for c in cues)


def _section_of(text: str) -> str | None:
    for section, cues in _SECTIONS:
        if _has_cue(text, cues):
            return section
    return None


# Urgency is never read from a word here: the override (meaning and cues, before
# routing) decides it, so "the emergency visit line on my bill" is a billing question.
_REASONS = (
            ("billing", ("bill", "insurance", "charge", "payment", "invoice", "refund",
                         "copay", "receipt", "hsa", "statement", "covered", "coverage",
                         "ppo", "hmo", "deductible", "medicare", "medicaid")),
            ("records", ("record", "form", "letter", "transfer", "certificate", "copy",
                         "images", "files", "notes", "history")),
            ("prescription", ("prescription", "refill", "medication", "pharmacy")))


def _cue(patterns: tuple[str, ...], text: str) -> bool:
    plain = " ".join(re.findall(r"[a-z0-9]+", text.lower().replace("'", "").replace("\u2019", "")))
    return re.search(r"\b(?:" + "|".join(patterns) + r")\b", plain) is not None


def _reason_of(text: str) -> str:
    for reason, cues in _REASONS:
        if _has_cue(text, cues):
            return reason
    return "other"


def load_clinic_seed(path: Path) -> tuple[list[Provider], dict[str, JSON]]:
    data, _ = read_seed(path)
    providers = [Provider(p["id"], p["name"], p["specialty"], tuple(p["days"]),
                          p["hours"][0], p["hours"][1], int(p["slot_minutes"]))
                 for p in data["providers"]]
    patients: dict[str, Any] = {p["ref"]: p for p in data.get("patients", [])}
    return providers, patients


async def seed_providers(store: Store, providers: list[Provider]) -> None:
    async with store.transaction() as db:
        for p in providers:
            await db.execute(
                "INSERT OR REPLACE INTO clinic_providers (id, name, specialty, schedule) "
                "VALUES (?, ?, ?, ?)",
                (p.id, p.name, p.specialty, json.dumps(
                    {"days": p.days, "hours": [p.start, p.end], "slot_minutes": p.slot_minutes})))
