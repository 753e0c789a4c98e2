"""One conversational turn: route, fill slots, run tools, write the reply.

Tool choice is the runtime's job, not free generation: the router picks an intent from
examples, slots come from deterministic extraction checked against the catalog or schedule
(the model proposes arguments by grammar-constrained JSON only when that falls short), and
dialogue state (the last product, a half-filled request) lives in code. The model writes the
reply from the tool results; a checked template stands in when its text will not do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from edged.agents import portal
from edged.agents.approvals import Approvals
from edged.agents.config import AgentSpec
from edged.agents.encoder import Encoder, Matrix, clauses
from edged.agents.kit import (
    Asking,
    Chaining,
    Continuing,
    Exemplary,
    HandingOff,
    Meaning,
    Override,
    Overriding,
    Preparing,
    Toolset,
)
from edged.agents.metrics import AgentMetrics
from edged.agents.planner import ModelPlanner
from edged.agents.reply import ReplyWriter
from edged.agents.router import Route, Router
from edged.agents.sessions import Session, SessionStore
from edged.agents.slotfill import SlotFiller, grounded
from edged.agents.tickets import NOT_NOTIFIED
from edged.agents.tools import JSON, Tool, ToolContext, validate
from edged.audit.sink import AuditSink
from edged.errors import BadRequest, EdgedError, Forbidden, NotFound
from edged.models.contract import Inference
from edged.roles import Peer, Role

log = logging.getLogger(__name__)

MAX_MESSAGE = 2000
CONFIDENT = 0.45  # a routed intent this strong overrides a half-filled request
OUT_OF_SCOPE = "<out of scope>"
NEAR = 0.08  # intents this close to the best one compete on the details a message gives
CLEAR = 0.05  # a clause's intent must lead the next by this much to count as its own ask
ANSWER_WORDS = 6  # an answer to a question is short ("512GB then", "Olga Petrenko")
NEAR_CANNED = 0.15  # a canned answer gives way sooner: a message with details wants a tool
MODEL_CANNOT_FILL = {"date", "time"}  # see slotfill.grounded: never invented
_PERSON = re.compile(r"\b(?:staff|human|person|employee|manager|representative|"
                     r"(?:talk|speak) to (?:someone|somebody))\b", re.I)
FOLLOWUP_STARTS = ("and ", "what about", "how about", "or ", "also ", "in ", "same ", "the ")

EventSink = Callable[[JSON], Awaitable[None]]
FRONT_STAY = 0.05  # how much better another member must fit to take over a conversation


@dataclass
class Agent:
    spec: AgentSpec
    router: Router
    tools: dict[str, tuple[Tool, Toolset]]  # only the allowlisted ones
    replies: dict[str, str]  # canned answers by intent
    mask: Callable[[str], str]  # entities out before routing
    embed_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    embed_state: str = "not tried"
    exemplars: dict[str, Matrix] = field(default_factory=dict)  # kit groups, encoded

    @cached_property
    def handoff(self) -> str | None:
        """The tool that hands a conversation to a person, as its kit names it."""
        for name, (_, toolset) in self.tools.items():
            if isinstance(toolset, HandingOff) and toolset.handoff == name:
                return name
        return None

    def may_use(self, peer: Peer) -> bool:
        if peer.role >= Role.ADMIN or not self.spec.allowed_groups:
            return True
        return bool(set(self.spec.allowed_groups) & peer.groups)


@dataclass
class Turn:
    session_id: str
    reply: str
    actions: list[JSON]
    intent: str | None = None
    route_ms: float = 0.0
    pending: JSON | None = None  # the request a clarifying question is completing
    reply_by: str = "template"  # or "model"
    planned_by: str = "router"  # or "model" (planner = "model" and its call validated)

    def body(self) -> JSON:
        out: JSON = {"session_id": self.session_id, "reply": self.reply, "actions": self.actions,
               "intent": self.intent, "route_ms": round(self.route_ms, 1),
               "reply_by": self.reply_by, "planned_by": self.planned_by}
        if self.pending is not None:
            out["pending"] = self.pending
        return out


class AgentRuntime:
    def __init__(self, agents: dict[str, Agent], sessions: SessionStore,
                 models: Inference | None, audit: AuditSink, metrics: AgentMetrics,
                 encoder: Encoder, approvals: Approvals | None = None) -> None:
        self.agents = agents
        self.approvals = approvals
        self._sessions = sessions
        self._models = models
        self._encoder = encoder
        self._audit = audit
        self._metrics = metrics
        self._slots = SlotFiller(models)
        self._planner = ModelPlanner(models)
        self._writer = ReplyWriter(models)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # session id -> (lock, users)
        self.warmed = asyncio.Event()  # set once the examples are encoded (or cannot be)

    def health(self) -> dict[str, Any]:
        return {name: {"routing": a.embed_state, "tools": len(a.tools)}
                for name, a in self.agents.items()}

    async def warm(self) -> None:
        """Encode every agent's examples and exemplars now (or read them from the disk
        cache), so the first turn costs what any turn does."""
        for agent in list(self.agents.values()):
            await self._warm(agent)

    async def run(self) -> None:
        """Warm up, then remove expired sessions once a minute (expiry is also checked on
        every load)."""
        await self.warm()
        self.warmed.set()
        while True:
            gone = await self._sessions.purge()
            if gone:
                log.info("agents: %d expired sessions removed", gone)
            await asyncio.sleep(60)

    def visible(self, peer: Peer) -> list[Agent]:
        return [a for a in self.agents.values() if a.may_use(peer)]

    def agent_for(self, name: str, peer: Peer) -> Agent:
        agent = self.agents.get(name)
        if agent is None:
            raise NotFound(f"no agent named {name!r}", code="unknown_agent")
        if not agent.may_use(peer):
            raise Forbidden(f"agent {name!r} is only for the groups "
                            f"{', '.join(agent.spec.allowed_groups)}")
        return agent

    async def chat(self, name: str, peer: Peer, message: str, session_id: str | None,
                   token: str | None = None, events: EventSink | None = None) -> Turn:
        agent = self.agent_for(name, peer)
        text = message.strip()
        if not text or len(text) > MAX_MESSAGE:
            raise BadRequest(f"message: must be 1 to {MAX_MESSAGE} characters")
        if agent.spec.kind == "front":
            return await self._front(agent, peer, text, session_id, token, events)
        if session_id is None:
            return await self._chat(agent, peer, text, self._sessions.create(name, peer.uid),
                                    token, events)
        async with self._one_turn_at_a_time(session_id):
            # Loaded under the lock: two messages on one session never share a state.
            session = await self._sessions.load(session_id, name, peer.uid)
            return await self._chat(agent, peer, text, session, token, events)

    async def _front(self, front: Agent, peer: Peer, text: str, session_id: str | None,
                     token: str | None, events: EventSink | None) -> Turn:
        """A front desk: each turn goes to the member it is meant for, with that member's
        allowlist, groups and PHI rules; a change of member is a ``handoff`` action, and the
        member starts with the conversation so far."""
        members = [self.agents[m] for m in front.spec.members
                   if m in self.agents and self.agents[m].may_use(peer)]
        if not members:
            raise Forbidden(f"none of the agents behind {front.spec.name!r} is open to you")
        sealed = any(m.spec.phi for m in members)  # its history may hold a member's PHI
        if session_id is None:
            return await self._front_turn(front, members, peer, text, token, events,
                                          self._sessions.create(front.spec.name, peer.uid),
                                          sealed)
        async with self._one_turn_at_a_time(session_id):
            session = await self._sessions.load(session_id, front.spec.name, peer.uid)
            return await self._front_turn(front, members, peer, text, token, events, session,
                                          sealed)

    async def _front_turn(self, front: Agent, members: list[Agent], peer: Peer, text: str,
                          token: str | None, events: EventSink | None, session: Session,
                          sealed: bool) -> Turn:
        state = session.state
        ids: dict[str, str] = state.setdefault("members", {})
        inners = {m.spec.name: await self._inner(m, ids, peer, state) for m in members
                  if m.spec.name == state.get("member")}
        waiting = any(bool(i.state.get("pending")) for i in inners.values())
        member = await self._member_for(members, state, text, waiting)
        name = member.spec.name
        actions: list[JSON] = []
        if name != state.get("member"):
            action = {"tool": "handoff", "arguments": {"to": name},
                      "result": {"summary": f"Handed to {name}."}}
            actions.append(action)
            await self._audit.append("agent.handoff", f"agent:{front.spec.name}", {
                "session": session.id, "uid": peer.uid, "to": name,
                "from": state.get("member")})
            if events is not None:
                await events({"type": "action", **action})
        inner = inners.get(name) or await self._inner(member, ids, peer, state)
        async with self._one_turn_at_a_time(inner.id):
            turn = await self._chat(member, peer, text, inner, token, events)
        ids[name] = inner.id
        state["member"] = name
        self._remember_exchange(session, text, turn.reply)
        await self._sessions.save(session, encrypt=sealed)
        return Turn(session.id, turn.reply, actions + turn.actions, turn.intent,
                    turn.route_ms, turn.pending, turn.reply_by)

    async def _inner(self, member: Agent, ids: dict[str, str], peer: Peer,
                     state: JSON) -> Session:
        """A member's own session behind a front desk; a new one starts with the
        conversation so far."""
        if member.spec.name in ids:
            with contextlib.suppress(NotFound):  # expired: start again
                return await self._sessions.load(ids[member.spec.name], member.spec.name,
                                                 peer.uid)
        inner = self._sessions.create(member.spec.name, peer.uid)
        inner.state["history"] = list(state.get("history", []))
        return inner

    async def _member_for(self, members: list[Agent], state: JSON, text: str,
                          waiting: bool) -> Agent:
        """The member whose examples the text is nearest (a member's safety override wins
        outright); the current member keeps a conversation that is waiting on it (a
        question it asked) or that no other member fits clearly better."""
        current = next((m for m in members if m.spec.name == state.get("member")), None)
        for member in members:
            await self._warm(member)
        # One encoder for every agent: the text is encoded once for all the members.
        shared = await self._encoder.encode([text]) if any(map(_embeds, members)) else None
        best, best_score = current, -1.0
        for member in members:
            vectors = shared if _embeds(member) else None
            if _override(member, text, _meaning(member, vectors)) is not None:
                return member
            route = member.router.route(text, None if vectors is None else vectors[0])
            score = route.nearest if route.nearest is not None else route.score
            if member is current:
                score += 1.0 if waiting else FRONT_STAY
            if score > best_score:
                best, best_score = member, score
        assert best is not None
        return best

    @contextlib.asynccontextmanager
    async def _one_turn_at_a_time(self, session_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(session_id, (asyncio.Lock(), 0))
        self._locks[session_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[session_id]
            if users <= 1:
                del self._locks[session_id]
            else:
                self._locks[session_id] = (lock, users - 1)

    async def _chat(self, agent: Agent, peer: Peer, text: str, session: Session,
                    token: str | None, events: EventSink | None) -> Turn:
        name = agent.spec.name
        started = time.perf_counter()
        found = portal.find_token(text)
        if found:  # a pasted token is a credential, not words to route or keep in history
            text = text.replace(found, " ").strip() or "open my patient portal"
        token = token or found or session.state.get("token")
        if token and agent.spec.phi:
            session.state["token"] = token  # the session is encrypted at rest
        turn = await self._turn(agent, session, peer, text, token, events)
        self._remember_exchange(session, text, turn.reply)
        await self._sessions.save(session, encrypt=agent.spec.phi)
        self._metrics.turns.labels(name, "tool" if turn.actions else "talk").inc()
        self._metrics.turn_seconds.labels(name).observe(time.perf_counter() - started)
        return turn

    @staticmethod
    def _remember_exchange(session: Session, text: str, reply: str) -> None:
        history = session.state.setdefault("history", [])
        history.append([text[:300], reply[:300]])
        del history[:-6]

    async def _turn(self, agent: Agent, session: Session, peer: Peer, text: str,
                    token: str | None, events: EventSink | None) -> Turn:
        await self._warm(agent)
        parts = clauses(text)  # the whole message first, then its clauses
        vectors = await self._vectors(agent, parts)  # encoded once for all that follows
        forced = _override(agent, text, _meaning(agent, vectors))
        if forced is not None:
            return await self._forced(agent, session, peer, forced, token, events)
        pending = bool(session.state.get("pending"))
        asks = [] if pending or vectors is None else self._asks(agent, parts[1:], vectors[1:])
        if len(asks) < 2:
            query = None if vectors is None else vectors[0]
            return await self._one(agent, session, peer, text, token, events, query=query)
        # Two asks in one message: the first that needs a tool leads; the other is
        # answered after it (a tool it can run, or its canned answer) or asked next.
        asks.sort(key=lambda a: a[1] not in agent.tools)
        (lead, _), (other, other_intent) = asks[0], asks[1]
        first = await self._one(agent, session, peer, lead, token, events)
        second = await self._one(agent, session, peer, other, token, events,
                                 only=other_intent)
        reply = (first.reply if second.reply in first.reply
                 else f"{first.reply} {second.reply}".strip())
        return Turn(session.id, reply, first.actions + second.actions, first.intent,
                    first.route_ms + second.route_ms, first.pending or second.pending,
                    first.reply_by if not second.actions else "template")

    def _asks(self, agent: Agent, parts: list[str], vectors: Matrix) -> list[tuple[str, str]]:
        """The clauses of a message that ask different things, with what each asks:
        "do you have the Anker power bank, and what's the wifi password?" is two."""
        if len(parts) < 2:
            return []
        found: list[tuple[str, str]] = []
        for part, vector in zip(parts, vectors, strict=True):
            route = agent.router.route(part, vector)
            runner_up = sorted(route.scores.values())[-2] if len(route.scores) > 1 else 0.0
            if (route.intent is None or route.score < agent.spec.route_threshold
                    or route.score - runner_up < CLEAR or len(part.split()) < 3):
                continue  # a clause that asks nothing clearly ("thanks") adds no ask
            intent = (OUT_OF_SCOPE if route.nearest is not None
                      and route.nearest < agent.spec.scope_threshold else route.intent)
            if (intent in agent.tools or intent in agent.replies) and all(
                    intent != seen or _differs(agent, intent, part, other)
                    for other, seen in found):
                found.append((part, intent))
        tools = [(p, i) for p, i in found if i in agent.tools]
        others = [(p, i) for p, i in found if i not in agent.tools]
        handoff = agent.handoff
        if len(tools) == 1 and others:  # a tool ask and a question nothing here answers
            intent = tools[0][1]
            rest = " ".join(p for p in parts if p != others[0][0])
            return [(rest, intent), others[0]]
        complete = [(p, i) for p, i in tools if i != handoff and _complete(agent, i, p)]
        return complete[:2] if len(complete) >= 2 else []

    async def _one(self, agent: Agent, session: Session, peer: Peer, text: str,
                   token: str | None, events: EventSink | None,
                   only: str | None = None, query: Matrix | None = None) -> Turn:
        """One ask: route (or take ``only``), fill, run, reply. ``query``: the text's
        vector when the turn has it already."""
        state = session.state
        t0 = time.perf_counter()
        if only is not None and only in agent.replies:
            return Turn(session.id, agent.replies[only], [], only, 0.0)
        planned = await self._planned(agent, session, text) if only is None else None
        if planned is not None:
            name, args = planned
            state.pop("pending", None)
            ctx = ToolContext(agent.spec.name, peer.uid, session.id, token, agent.spec.phi)
            actions = await self._run_chain(agent, ctx, name, args, state, events)
            reply, by = await self._writer.write(agent.spec, text, actions)
            return Turn(session.id, with_required(reply, actions), actions, name,
                        (time.perf_counter() - t0) * 1000, reply_by=by, planned_by="model")
        if query is None:
            query = await self._query_vector(agent, text)
        route = agent.router.route(text, query)
        intent = only or self._intent(agent, state, text, route)
        log.debug("agent %s: route %s nearest %s -> %s", agent.spec.name,
                  {k: round(v, 3) for k, v in sorted(route.scores.items(),
                                                     key=lambda kv: -kv[1])[:3]},
                  route.nearest and round(route.nearest, 3), intent)
        if intent is not None and not state.get("pending") and only is None:
            intent = _most_specific(agent, route, intent, text)
        route_ms = (time.perf_counter() - t0) * 1000
        self._metrics.route_seconds.labels(agent.spec.name).observe(route_ms / 1000)
        if intent == OUT_OF_SCOPE:
            state["misses"] = 0
            return Turn(session.id, _out_of_scope(agent), [], None, route_ms)
        if intent is None:
            return await self._no_intent(agent, session, peer, text, token, events, route_ms)
        state["misses"] = 0
        if intent in agent.replies:
            return Turn(session.id, agent.replies[intent], [], intent, route_ms)
        tool, toolset = agent.tools[intent]
        args = await self._fill(agent, tool, toolset, text, state)
        missing = [k for k in tool.schema["required"] if k not in args]
        ctx = ToolContext(agent.spec.name, peer.uid, session.id, token, agent.spec.phi)
        if missing:
            return await self._ask(agent, tool, toolset, ctx, args, missing, text, state,
                                   events, intent, route_ms)
        state.pop("pending", None)
        actions = await self._run_chain(agent, ctx, tool.name, args, state, events)
        reply, by = await self._writer.write(agent.spec, text, actions)
        return Turn(session.id, with_required(reply, actions), actions, intent, route_ms,
                    reply_by=by)

    async def _planned(self, agent: Agent, session: Session, text: str
                       ) -> tuple[str, JSON] | None:
        """With ``planner = "model"``: the model's call, when it validates (allowlisted,
        schema, the kit's check) and no question is pending; else None (the router plans)."""
        if agent.spec.planner != "model" or session.state.get("pending"):
            return None
        tools = {name: tool for name, (tool, _) in agent.tools.items()}
        proposal = await self._planner.propose(agent.spec, tools, session.state.get(
            "history", []), text)
        if proposal is None or proposal[0] not in agent.tools:
            return None
        name, args = proposal
        tool, toolset = agent.tools[name]
        args = _clean(args)
        if not _valid(tool, args) or not toolset.check(name, args):
            log.debug("agent %s: model call %s(%s) did not validate; the router plans",
                      agent.spec.name, name, args)
            return None
        if any(k not in args for k in tool.schema.get("required", ())):
            return None
        if not all(grounded(k, v, text) for k, v in args.items()):
            return None  # a value the person never said (a small model invents them)
        return name, args

    async def _ask(self, agent: Agent, tool: Tool, toolset: Toolset, ctx: ToolContext,
                   args: JSON, missing: list[str], text: str, state: JSON,
                   events: EventSink | None, intent: str, route_ms: float) -> Turn:
        """A request short of a detail waits for it. When the kit can first show the
        choices (the free slots before a time is asked), that tool runs and the question
        follows its answer."""
        state["pending"] = {"tool": tool.name, "args": args}
        pending = {"tool": tool.name, "arguments": args, "missing": missing}
        question = _question(tool, toolset, missing[0])
        step = (toolset.instead(tool.name, args, missing, text, state)
                if isinstance(toolset, Preparing) else None)
        if step is None or step[0] not in agent.tools:
            return Turn(ctx.session_id, question, [], intent, route_ms, pending)
        actions = await self._run_chain(agent, ctx, step[0], step[1], state, events)
        state["pending"] = {"tool": tool.name, "args": args}  # the chain may remember others
        shown = " ".join(str(a["result"].get("summary", "")) for a in actions).strip()
        found = any(a["result"].get("found", True) for a in actions)
        reply = f"{shown} {question}" if found else shown
        return Turn(ctx.session_id, reply, actions, intent, route_ms, pending)

    async def _forced(self, agent: Agent, session: Session, peer: Peer, forced: Override,
                      token: str | None, events: EventSink | None) -> Turn:
        """Run an override: any half-filled request is dropped (never resumed later), and
        the reply is the checked template, so no model wording can lose a safety sentence."""
        session.state.pop("pending", None)
        session.state["misses"] = 0
        if forced.tool is None:  # the kit answers itself: nothing here can do it
            return Turn(session.id, " ".join(forced.always), [], None)
        ctx = ToolContext(agent.spec.name, peer.uid, session.id, token, agent.spec.phi)
        actions = await self._run_chain(agent, ctx, forced.tool, forced.args, session.state,
                                        events)
        reply = " ".join(str(a["result"].get("summary", "")) for a in actions).strip()
        return Turn(session.id, with_required(reply, actions, forced.always), actions,
                    forced.tool)

    def _intent(self, agent: Agent, state: JSON, text: str, route: Route) -> str | None:
        strong = route.intent if route.score >= agent.spec.route_threshold else None
        pending = state.get("pending")
        handoff = agent.handoff
        if pending and handoff and (strong == handoff or _asks_for_person(text)):
            return handoff  # a customer who asks for a person is never asked again
        if pending and (strong is None or strong == pending["tool"] or route.score < CONFIDENT
                        or _answers(agent, pending, text, state)):
            return str(pending["tool"])
        last = state.get("last_tool")
        following = _continues(agent, last, text, state) if last else None
        if following is not None and (strong is None or route.score < CONFIDENT
                                      or strong == following):
            return following
        if (last in agent.tools and last != handoff and route.score < CONFIDENT
                and _looks_like_followup(text) and agent.tools[last][1].mentions(text)):
            return str(last)
        if (route.nearest is not None and route.nearest < agent.spec.scope_threshold
                and not _asks_for_person(text)):
            return OUT_OF_SCOPE  # near no example of anything this agent does
        if strong is not None and strong not in agent.tools and strong not in agent.replies:
            return None  # an intent whose tool is not on the allowlist never runs
        return strong

    async def _no_intent(self, agent: Agent, session: Session, peer: Peer, text: str,
                         token: str | None, events: EventSink | None, route_ms: float) -> Turn:
        """First miss: ask to rephrase. Second in a row: hand off to a person."""
        state = session.state
        state["misses"] = int(state.get("misses", 0)) + 1
        handoff = agent.handoff
        if state["misses"] < 2 or handoff is None:
            answer = await self._writer.escalate(agent.spec, text)  # escalate = low_confidence
            if answer is not None:
                state["misses"] = 0
                return Turn(session.id, answer, [], None, route_ms, reply_by="model")
            return Turn(session.id, _clarify(agent), [], None, route_ms)
        state["misses"] = 0
        toolset = agent.tools[handoff][1]
        args = toolset.extract(handoff, text, state)
        ctx = ToolContext(agent.spec.name, peer.uid, session.id, token, agent.spec.phi)
        actions = await self._run_chain(agent, ctx, handoff, _clean(args), state, events)
        reply = "I'm not sure I can help with that, so I've asked a staff member to come over."
        return Turn(session.id, reply, actions, handoff, route_ms)

    async def _query_vector(self, agent: Agent, text: str) -> Matrix | None:
        found = await self._vectors(agent, [text])
        return None if found is None else found[0]

    async def _vectors(self, agent: Agent, texts: list[str]) -> Matrix | None:
        """The texts' vectors (meaning reads requests as said), or None when the agent
        understands by words only."""
        if not _embeds(agent):
            return None
        return await self._encoder.encode(texts)

    async def _warm(self, agent: Agent) -> None:
        """Encode the routing examples and the kits' exemplars once (cached on disk)."""
        async with agent.embed_lock:
            if agent.embed_state in ("ready", "words only"):
                return
            if not agent.spec.embeddings or not self._encoder.available:
                agent.embed_state = "words only"
                return
            texts = [e for _, e in agent.router.example_texts()]
            vectors = await self._encoder.encode_set(texts)
            if vectors is None:  # tried again at the next turn: the encoder may load then
                log.warning("agent %s: routing by words for now (%s)", agent.spec.name,
                            self._encoder.state)
                return
            agent.router.set_embeddings(vectors)
            for _, toolset in agent.tools.values():
                if isinstance(toolset, Exemplary):
                    for group, sentences in toolset.exemplars().items():
                        found = await self._encoder.encode_set(list(sentences))
                        if found is not None:
                            agent.exemplars[group] = found
            await self._encoder.encode(["hello"])  # the session's first run is the slow one
            agent.embed_state = "ready"

    async def _fill(self, agent: Agent, tool: Tool, toolset: Toolset, text: str,
                    state: JSON) -> JSON:
        pending = state.get("pending") or {}
        base = dict(pending.get("args", {})) if pending.get("tool") == tool.name else {}
        found = _clean(toolset.extract(tool.name, text, state))
        args = {**base, **found}
        if _valid(tool, args) and toolset.check(tool.name, args):
            return args
        missing = set(tool.schema["required"]) - set(args)
        if agent.spec.model_slots and not (missing and missing <= MODEL_CANNOT_FILL):
            proposed = await self._slots.propose(agent.spec, tool, text)
            if proposed and _valid(tool, {**proposed, **args}) and toolset.check(
                    tool.name, {**proposed, **args}):
                return {**proposed, **args}
        return args

    async def _run_chain(self, agent: Agent, ctx: ToolContext, name: str, args: JSON,
                         state: JSON, events: EventSink | None) -> list[JSON]:
        actions: list[JSON] = []
        step: tuple[str, JSON] | None = (name, args)
        while step is not None and len(actions) < agent.spec.max_steps:
            tool_name, tool_args = step
            refused = await self._approved(agent, ctx, tool_name, tool_args, events)
            result = refused or await self.run_tool(agent, ctx, tool_name, tool_args)
            action = {"tool": tool_name, "arguments": tool_args, "result": result}
            actions.append(action)
            if events is not None:
                await events({"type": "action", **action})
            if tool_name in agent.tools and "error" not in result:
                agent.tools[tool_name][1].remember(tool_name, tool_args, result, state)
                state["last_tool"] = tool_name
            step = _next_step(agent, tool_name, tool_args, result)
        return actions

    async def _approved(self, agent: Agent, ctx: ToolContext, name: str, args: JSON,
                        events: EventSink | None) -> JSON | None:
        """For a tool marked ``approval = "staff"``: wait for a person's decision. None when
        it may run; otherwise the result that says why not."""
        if name not in agent.spec.approval or self.approvals is None:
            return None
        req = await self.approvals.ask(agent.spec.name, name, args, ctx.session_id, ctx.uid,
                                       agent.spec.approval_timeout, agent.spec.phi)
        if events is not None:
            await events({"type": "approval", "id": req.id, "tool": name, "state": "waiting",
                          "text": f"I've asked a member of staff to approve this ({req.id});"
                                  " one moment, please."})
        decision = await self.approvals.wait(req)
        if events is not None:
            await events({"type": "approval", "id": req.id, "tool": name, "state": decision})
        if decision == "approved":
            return None
        why = {"denied": "A member of staff declined this request.",
               "expired": "No one from staff could approve this in time; please ask at the "
                          "desk."}[decision]
        return {"error": f"approval_{decision}", "approval": req.id, "summary": why}

    async def run_tool(self, agent: Agent, ctx: ToolContext, name: str, args: JSON) -> JSON:
        """Run one tool for an agent: allowlist, schema, timeout, audit. Never raises for a
        tool's own failure; the result says what went wrong."""
        started = time.perf_counter()
        outcome, result = "ok", {}
        try:
            if name not in agent.tools:  # whatever produced the name, it is not allowed
                raise Forbidden(f"tool {name!r} is not allowed for agent {agent.spec.name!r}")
            tool = agent.tools[name][0]
            clean = validate(tool.schema, args)
            result = await asyncio.wait_for(tool.fn(ctx, **clean), agent.spec.tool_timeout)
        except TimeoutError:
            outcome, result = "timeout", {"error": "timeout", "summary":
                                          "That took too long; please try again."}
        except EdgedError as e:
            outcome, result = e.code, {"error": e.code, "summary": e.message}
            if name == agent.handoff:  # a person asking for staff gets words, not internals
                result.update(detail=e.message, summary=NOT_NOTIFIED)
        duration = time.perf_counter() - started
        self._metrics.tool_calls.labels(agent.spec.name, name, outcome).inc()
        await self._audit.append("tool.call", f"agent:{agent.spec.name}", {
            "session": ctx.session_id, "uid": ctx.uid, "tool": name, "arguments": args,
            "result": result, "duration_ms": round(duration * 1000, 1), "outcome": outcome})
        return result


def _embeds(agent: Agent) -> bool:
    """Does the agent read requests by their meaning (its examples are encoded)?"""
    return agent.spec.embeddings and agent.router.embedded


def _next_step(agent: Agent, name: str, args: JSON, result: JSON) -> tuple[str, JSON] | None:
    """A kit's follow-up chain (out of stock here -> alternatives), within the allowlist."""
    toolset = agent.tools[name][1] if name in agent.tools else None
    step = toolset.follow_up(name, args, result) if isinstance(toolset, Chaining) else None
    return step if step is not None and step[0] in agent.tools else None


def _question(tool: Tool, toolset: Toolset, slot: str) -> str:
    """The kit's question for a missing slot, or one made from the parameter's description."""
    asked = toolset.question(tool.name, slot) if isinstance(toolset, Asking) else None
    if asked:
        return asked
    about = tool.schema["properties"].get(slot, {}).get("description") or slot.replace("_", " ")
    return f"Could you tell me {about}?"


def with_required(reply: str, actions: list[JSON], always: tuple[str, ...] = ()) -> str:
    """The reply with every sentence a result marks ``must_say`` (an urgent escalation's
    emergency advice), whoever wrote it: a model's wording may drop anything else."""
    required = [*always, *(str(m) for a in actions for m in a["result"].get("must_say", []))]
    for sentence in required:
        if sentence not in reply:
            reply = f"{reply} {sentence}".strip()
    return reply


def _override(agent: Agent, text: str, meaning: Meaning) -> Override | None:
    for _, toolset in agent.tools.values():
        if isinstance(toolset, Overriding):
            forced = toolset.override(text, meaning)
            if forced is not None and (forced.tool is None or forced.tool in agent.tools):
                return forced
    return None


def _meaning(agent: Agent, vectors: Matrix | None) -> Meaning:
    """Per clause vector, how near it comes to each of the kits' exemplar groups."""
    if vectors is None or not agent.exemplars:
        return Meaning(())
    per_group = {group: _top_mean_rows(vectors @ exemplars.T)
                 for group, exemplars in agent.exemplars.items()}
    return Meaning(tuple({g: float(v[i]) for g, v in per_group.items()}
                         for i in range(vectors.shape[0])))


def _top_mean_rows(sims: Matrix, k: int = 5) -> Matrix:
    """Per row, the mean of its ``k`` best values: one lucky exemplar is not a match."""
    import numpy as np

    k = min(k, sims.shape[1])
    best: Matrix = np.sort(sims, axis=1)[:, -k:].mean(axis=1)
    return best


def _valid(tool: Tool, args: JSON) -> bool:
    try:
        validate(tool.schema, args)
    except BadRequest:
        return False
    return True


def _clean(args: JSON) -> JSON:
    return {k: v for k, v in args.items() if v not in (None, "", [])}


def _asks_for_person(text: str) -> bool:
    return _PERSON.search(text) is not None


def _looks_like_followup(text: str) -> bool:
    low = text.lower().strip()
    return low.startswith(FOLLOWUP_STARTS) or len(low.split()) <= 5


def _most_specific(agent: Agent, route: Route, intent: str, text: str) -> str:
    """Of the intents scored nearly as high as the chosen one, a tool whose every required
    detail this very message gives: "Dr Kim Wednesday 1:30 for Ben Adeyemi" is a booking
    even if it reads like a question about times (but "Dr Rossi Tuesday around 10?" stays
    a question). A canned answer ("that is medical advice") gives way to any tool the
    message names a detail of. The hand-off tool is never preferred this way."""
    handoff = agent.handoff
    if intent not in route.scores or intent == OUT_OF_SCOPE:
        return intent
    if intent == handoff:
        return _not_handoff(agent, route, text) or intent
    floor = route.scores[intent] - (NEAR_CANNED if intent in agent.replies else NEAR)
    best, best_filled = intent, _filled(agent, intent, text)
    for name, score in sorted(route.scores.items(), key=lambda kv: -kv[1]):
        if score < floor or name in (intent, handoff) or name not in agent.tools:
            continue
        filled = _filled(agent, name, text)
        complete = filled == len(agent.tools[name][0].schema["required"])
        if filled > best_filled and (complete or intent in agent.replies):
            best, best_filled = name, filled
    return best


def _not_handoff(agent: Agent, route: Route, text: str) -> str | None:
    """A hand-off chosen for a message that asks for no person but names what a nearly as
    likely tool takes ("itchy rash for weeks, anything Wednesday?"): that tool. A person
    asked for is never redirected."""
    handoff = str(agent.handoff)
    if _asks_for_person(text) or _says_why(agent, handoff, text):
        return None
    floor = route.scores[handoff] - NEAR
    for name, score in sorted(route.scores.items(), key=lambda kv: -kv[1]):
        if score >= floor and name in agent.tools and name != handoff:
            toolset = agent.tools[name][1]
            found = _clean(toolset.extract(name, text, {}))
            if found and toolset.check(name, found):
                return name
    return None


def _says_why(agent: Agent, name: str, text: str) -> bool:
    """Does the text give the tool a specific choice ("return", "billing") for one of its
    enumerated parameters, rather than what an empty message gets ("other")?"""
    tool, toolset = agent.tools[name]
    said, empty = toolset.extract(name, text, {}), toolset.extract(name, "", {})
    return any("enum" in spec and said.get(key) != empty.get(key)
               for key, spec in tool.schema["properties"].items())


def _filled(agent: Agent, name: str, text: str) -> int:
    """How many required details of tool ``name`` the text itself gives (checked)."""
    if name not in agent.tools:
        return 0
    tool, toolset = agent.tools[name]
    found = _clean(toolset.extract(name, text, {}))
    if not toolset.check(name, found):
        return 0
    return sum(1 for k in tool.schema["required"] if k in found)


def _complete(agent: Agent, intent: str, text: str) -> bool:
    """Does this text alone give every required detail of the tool (checked)?"""
    return _filled(agent, intent, text) == len(agent.tools[intent][0].schema["required"])


def _differs(agent: Agent, intent: str, a: str, b: str) -> bool:
    """Do two clauses ask the same tool for different things ("my balance", "my next
    appointment")?"""
    if intent not in agent.tools:
        return False
    toolset = agent.tools[intent][1]
    one, two = _clean(toolset.extract(intent, a, {})), _clean(toolset.extract(intent, b, {}))
    return bool(one) and bool(two) and one != two


def _answers(agent: Agent, pending: JSON, text: str, state: JSON) -> bool:
    """Does the message give the pending request something it lacked or asked about
    ("512GB then" after "there is no 1TB version"), whatever else its words resemble?"""
    name = str(pending.get("tool"))
    if name not in agent.tools or len(text.split()) > ANSWER_WORDS:
        return False  # a long message is a new request, not an answer
    tool, toolset = agent.tools[name]
    had = pending.get("args") or {}
    found = _clean(toolset.extract(name, text, state))
    return any(k in tool.schema["required"] and found.get(k) != had.get(k) for k in found)


def _continues(agent: Agent, last: str, text: str, state: JSON) -> str | None:
    if last not in agent.tools:
        return None
    toolset = agent.tools[last][1]
    found = toolset.continues(last, text, state) if isinstance(toolset, Continuing) else None
    return found if found in agent.tools else None


def _out_of_scope(agent: Agent) -> str:
    if agent.spec.out_of_scope_reply:
        return agent.spec.out_of_scope_reply
    return (f"Sorry, I can't help with that here. {_offer(agent)} For anything else, "
            "please ask a member of staff.")


def _offer(agent: Agent) -> str:
    what = ", ".join(t.replace("_", " ") for t in agent.tools)
    return f"I can help with: {what}."


def _clarify(agent: Agent) -> str:
    return f"Sorry, I didn't catch that. {_offer(agent)} Could you rephrase?"


def describe(agent: Agent) -> dict[str, Any]:
    out = {"name": agent.spec.name, "description": agent.spec.description,
           "model": agent.spec.model, "tools": list(agent.tools),
           "phi": agent.spec.phi, "routing": agent.embed_state, "kind": agent.spec.kind}
    if agent.spec.members:
        out["members"] = list(agent.spec.members)
    return out
