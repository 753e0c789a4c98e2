"""One remote alias: an OpenAI-compatible server reached over HTTP(S).

Requests go out in the server's own terms (tools, ``response_format``: a bigger model
handles them natively), with the alias's redactions applied to every text. Each call is
bounded by ``timeout``: a whole answer, or a stream's first token and every gap after it.
A failure that leaves nothing sent to the client (refused, stalled, 5xx, garbage, a stream
cut before its first token, the breaker open, every slot busy) raises ``RemoteFailure``,
which the caller answers from the fallback; a stream cut after its first token raises
``StreamCut``, which ends that stream with an error event. Each call is audited (alias,
sizes, outcome, who asked; what was sent only with ``audit.log_prompts``) and counted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from edged.audit.sink import AuditSink
from edged.errors import BadRequest, Unavailable
from edged.models.breaker import Breaker
from edged.models.redact import Redactor
from edged.models.remote_config import RemoteSpec
from edged.models.remote_metrics import RemoteMetrics

log = logging.getLogger(__name__)

# Request fields passed on to the server; anything else stays on the box.
CHAT_FIELDS = ("messages", "tools", "tool_choice", "functions", "function_call",
               "response_format", "max_tokens", "max_completion_tokens", "temperature",
               "top_p", "stop", "seed", "n", "stream", "stream_options", "presence_penalty",
               "frequency_penalty", "parallel_tool_calls")
EMBEDDING_FIELDS = ("input", "encoding_format", "dimensions")
_ERROR_BODY = 2048  # bytes of a failed answer kept for the message


class RemoteFailure(Unavailable):
    """The server could not answer and nothing has reached the client yet."""

    code = "remote_unavailable"

    def __init__(self, alias: str, reason: str, detail: str) -> None:
        super().__init__(f"model {alias!r} (remote): {detail}", reason=reason)
        self.reason = reason


class StreamCut(Unavailable):
    """A stream already under way broke off."""

    code = "remote_stream_cut"


@dataclass
class _Record:
    route: str
    stream: bool
    who: str
    sent: bytes
    redactions: Counter[str]
    prompt: Any
    started: float = field(default_factory=time.perf_counter)
    received: int = 0
    outcome: str = "ok"
    status: int | None = None


class RemoteModel:
    def __init__(self, spec: RemoteSpec, *, metrics: RemoteMetrics,
                 audit: AuditSink | None = None, log_prompts: bool = False) -> None:
        self.spec = spec
        self._metrics = metrics
        self._audit = audit
        self._log_prompts = log_prompts
        self._redactor = Redactor(spec.redact, spec.redact_patterns)
        self.breaker = Breaker(spec.breaker_failures, spec.breaker_open, time.monotonic)
        self._slots = asyncio.Semaphore(spec.max_concurrent)
        self._client = httpx.AsyncClient(
            base_url=spec.base_url, headers=_auth(spec), verify=_verify(spec),
            timeout=httpx.Timeout(spec.timeout), trust_env=False,
            limits=httpx.Limits(max_connections=spec.max_concurrent,
                                max_keepalive_connections=spec.max_concurrent))
        self.reachable: bool | None = None
        self.last_error: str | None = None
        self.latency: float | None = None  # seconds, moving average of good calls
        self.fallbacks = 0
        self.in_flight = 0
        self._show_breaker()

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- outgoing bodies -------------------------------------------------------------------

    def chat_body(self, body: dict[str, Any], who: str, route: str = "chat"
                  ) -> tuple[dict[str, Any], _Record]:
        counts: Counter[str] = Counter()
        out = {k: body[k] for k in CHAT_FIELDS if body.get(k) is not None}
        out["messages"] = self._redactor.messages(list(body["messages"]), counts)
        out["model"] = self.spec.model
        return out, self._record(route, bool(out.get("stream")), who, out, counts,
                                 out["messages"])

    def embedding_body(self, body: dict[str, Any], who: str) -> tuple[dict[str, Any], _Record]:
        counts: Counter[str] = Counter()
        texts = body["input"]
        items = [texts] if isinstance(texts, str) else list(texts)
        out = {k: body[k] for k in EMBEDDING_FIELDS if body.get(k) is not None}
        out["input"] = [self._redactor.text(t, counts) for t in items]
        out["model"] = self.spec.model
        return out, self._record("embeddings", False, who, out, counts, out["input"])

    def _record(self, route: str, stream: bool, who: str, out: dict[str, Any],
                counts: Counter[str], prompt: Any) -> _Record:
        for name, n in counts.items():
            self._metrics.redactions.labels(self.spec.alias, name).inc(n)
        return _Record(route, stream, who, json.dumps(out, ensure_ascii=False).encode(),
                       counts, prompt if self._log_prompts else None)

    # -- calls -------------------------------------------------------------------------------

    async def post(self, path: str, rec: _Record) -> dict[str, Any]:
        """A whole answer (chat without stream, embeddings) as the server's JSON."""
        async with self._admitted(rec):
            try:
                async with asyncio.timeout(self.spec.timeout):
                    resp = await self._client.post(path, content=rec.sent, headers=_JSON)
                    rec.status = resp.status_code
                    rec.received = len(resp.content)
                    self._check_status(resp.status_code, resp.content)
                    data = _json_object(resp.content)
                    if data is None or not _answer_shape(path, data):
                        raise self._fail("bad_response", "the server's answer is not an "
                                         "OpenAI response")
            except (httpx.HTTPError, TimeoutError) as e:
                raise self._transport_failure(e) from None
            self._succeeded(rec)
            return data

    def stream(self, rec: _Record) -> RemoteStream:
        return RemoteStream(self, rec)

    # -- bookkeeping (also used by RemoteStream) ----------------------------------------------

    async def _enter(self, rec: _Record) -> bool:
        """Take a slot (or fail at once: breaker open; or after the timeout: all busy).
        True when this call is the breaker's probe."""
        if not self.breaker.allow():
            self._metrics.calls.labels(self.spec.alias, "breaker_open").inc()
            raise self._fail("breaker_open", "the circuit breaker is open after "
                             f"{self.breaker.failures} failures in a row; next try in "
                             f"{self.breaker.retry_in():.0f}s", count=False)
        probe = self.breaker.state == "half_open"
        try:
            async with asyncio.timeout(self.spec.timeout):
                await self._slots.acquire()
        except BaseException as e:
            if probe:
                self.breaker.abandoned()
            if not isinstance(e, TimeoutError):
                raise
            self._metrics.calls.labels(self.spec.alias, "busy").inc()
            raise self._fail("busy", f"all {self.spec.max_concurrent} slots "
                             "(max_concurrent) stayed busy", count=False) from None
        self.in_flight += 1
        return probe

    async def _leave(self, rec: _Record, probe: bool, exc: BaseException | None) -> None:
        self._slots.release()
        self.in_flight -= 1
        if isinstance(exc, RemoteFailure | StreamCut):
            rec.outcome = str(exc.details.get("reason", "failed"))
        elif isinstance(exc, BadRequest):
            rec.outcome = "rejected"
        elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
            rec.outcome = "cancelled"
        elif exc is not None:
            rec.outcome = "error"
        if probe and self.breaker.state == "half_open":
            self.breaker.abandoned()  # the probe settled nothing: let the next one try
        self._show_breaker()
        await self._audit_call(rec)

    @asynccontextmanager
    async def _admitted(self, rec: _Record) -> AsyncIterator[None]:
        probe = await self._enter(rec)
        error: BaseException | None = None
        try:
            yield
        except BaseException as e:
            error = e
            raise
        finally:
            await self._leave(rec, probe, error)

    def _check_status(self, status: int, body: bytes) -> None:
        if status < 400:
            return
        message = _error_message(body)
        if status in (400, 413, 422):  # about the request: the fallback would refuse it too
            self._answered()
            raise BadRequest(f"model {self.spec.alias!r} (remote) refused the request: "
                             f"{message}", code="remote_rejected")
        raise self._fail("server_error", f"the server answered {status}: {message}")

    def _transport_failure(self, e: BaseException) -> RemoteFailure:
        if isinstance(e, RemoteFailure):
            return e
        if isinstance(e, TimeoutError | httpx.TimeoutException):
            return self._fail("timeout", f"no answer within {self.spec.timeout:g}s (timeout)")
        if isinstance(e, httpx.ConnectError):
            return self._fail("unreachable", f"cannot connect to {self.spec.base_url}: {e}")
        return self._fail("transport", f"the connection failed: {type(e).__name__}: {e}")

    def _fail(self, reason: str, detail: str, *, count: bool = True) -> RemoteFailure:
        """A failure the fallback can answer; ``count``: it says the server is unwell."""
        if count:
            self.breaker.failure()
            self.reachable = False
            self.last_error = detail
            log.warning("remote %s: %s", self.spec.alias, detail)
        self._show_breaker()
        return RemoteFailure(self.spec.alias, reason, detail)

    def _answered(self) -> None:
        self.reachable = True
        self.breaker.success()

    def _succeeded(self, rec: _Record) -> None:
        self._answered()
        seconds = time.perf_counter() - rec.started
        self.latency = seconds if self.latency is None else 0.8 * self.latency + 0.2 * seconds
        self._metrics.latency.labels(self.spec.alias, rec.route).observe(seconds)

    def fell_back(self, reason: str) -> None:
        self.fallbacks += 1
        self._metrics.fallbacks.labels(self.spec.alias, reason).inc()

    def _show_breaker(self) -> None:
        self._metrics.breaker.labels(self.spec.alias).set(
            ("closed", "half_open", "open").index(self.breaker.state))
        if self.reachable is not None:
            self._metrics.reachable.labels(self.spec.alias).set(int(self.reachable))

    async def _audit_call(self, rec: _Record) -> None:
        seconds = time.perf_counter() - rec.started
        self._metrics.calls.labels(self.spec.alias, rec.outcome).inc()
        self._metrics.bytes_sent.labels(self.spec.alias).inc(len(rec.sent))
        if self._audit is None:
            return
        data: dict[str, Any] = {
            "model": self.spec.alias, "server": urlsplit(self.spec.base_url).netloc,
            "remote_model": self.spec.model, "route": rec.route, "stream": rec.stream,
            "bytes_sent": len(rec.sent), "bytes_received": rec.received,
            "outcome": rec.outcome, "status": rec.status, "seconds": round(seconds, 3),
            "redactions": dict(rec.redactions)}
        if rec.prompt is not None:
            data["sent"] = rec.prompt
        try:
            await self._audit.append("model.remote", rec.who, data)
        except Exception:  # the call stands; a failing audit log raises its own alarm
            log.exception("could not audit a call to %s", self.spec.alias)

    def health(self) -> dict[str, Any]:
        return {"server": urlsplit(self.spec.base_url).netloc, "model": self.spec.model,
                "reachable": self.reachable, "breaker": self.breaker.state,
                "failures": self.breaker.failures, "fallback": self.spec.fallback,
                "fallbacks": self.fallbacks, "in_flight": self.in_flight,
                "latency_ms": round(self.latency * 1000, 1) if self.latency else None,
                "last_error": self.last_error}


class RemoteStream:
    """A streamed chat answer. ``start`` returns the chunks up to the first token (or
    raises ``RemoteFailure``); ``rest`` yields the others (or raises ``StreamCut``)."""

    def __init__(self, model: RemoteModel, rec: _Record) -> None:
        self._model = model
        self._rec = rec
        self._probe = False
        self._resp: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None
        self._entered = False
        self._finished = False

    async def start(self) -> list[dict[str, Any]]:
        m = self._model
        self._probe = await m._enter(self._rec)
        self._entered = True
        try:
            head = await self._head()
        except BaseException as e:
            error = m._transport_failure(e) if isinstance(e, httpx.HTTPError | TimeoutError) \
                else e
            await self.aclose(error)  # the audit record names the failure, not httpx's type
            if error is e:
                raise
            raise error from None
        m._succeeded(self._rec)
        return head

    async def _head(self) -> list[dict[str, Any]]:
        m = self._model
        head: list[dict[str, Any]] = []
        async with asyncio.timeout(m.spec.timeout):
            req = m._client.build_request("POST", "/chat/completions", content=self._rec.sent,
                                          headers=_JSON)
            self._resp = await m._client.send(req, stream=True)
            self._rec.status = self._resp.status_code
            if self._resp.status_code >= 400:
                body = await self._resp.aread()
                m._check_status(self._resp.status_code, body[:_ERROR_BODY])
            if not self._resp.headers.get("content-type", "").startswith("text/event-stream"):
                raise m._fail("bad_response", "the server did not answer with a stream")
            self._lines = self._resp.aiter_lines()
            while True:
                chunk = await self._next(m._fail)
                if chunk is None:
                    raise m._fail("cut", "the stream ended before its first token")
                head.append(chunk)
                if _has_token(chunk):
                    return head

    async def rest(self) -> AsyncIterator[dict[str, Any]]:
        try:
            while (chunk := await self._next(self._cut)) is not None:
                yield chunk
        except httpx.TimeoutException:
            raise self._cut("stalled", f"no data for {self._model.spec.timeout:g}s "
                            "(timeout)") from None
        except httpx.HTTPError as e:
            raise self._cut("cut", f"the connection broke: {type(e).__name__}") from None

    async def _next(self, fail: Any) -> dict[str, Any] | None:
        """The next chunk; None after ``[DONE]``. ``fail(reason, detail)`` makes the error."""
        assert self._lines is not None
        if self._finished:
            return None
        async for line in self._lines:
            self._rec.received += len(line) + 1
            if not line.startswith("data:"):
                continue  # blank lines, comments, event names
            payload = line[5:].strip()
            if payload == "[DONE]":
                self._finished = True
                return None
            chunk = _json_object(payload.encode())
            if chunk is None or "error" in chunk or not isinstance(chunk.get("choices"), list):
                detail = _error_message(payload.encode()) if chunk else "not JSON"
                raise fail("bad_response", f"the stream carried garbage: {detail}")
            return chunk
        raise fail("cut", "the stream ended without [DONE]")

    def _cut(self, reason: str, detail: str) -> StreamCut:
        m = self._model
        m.breaker.failure()
        m.reachable = False
        m.last_error = detail
        log.warning("remote %s: stream cut: %s", m.spec.alias, detail)
        return StreamCut(f"model {m.spec.alias!r} (remote): {detail}; this answer is "
                         "incomplete", reason=reason)

    async def aclose(self, error: BaseException | None = None) -> None:
        """Release the connection and the slot, and audit the call (once)."""
        if self._resp is not None:
            resp, self._resp = self._resp, None
            await resp.aclose()
        if self._entered:
            self._entered = False
            await self._model._leave(self._rec, self._probe, error)


_JSON = {"Content-Type": "application/json"}


def _auth(spec: RemoteSpec) -> dict[str, str]:
    if spec.api_key_file is None:
        return {}
    key = spec.api_key_file.read_text().strip()
    return {"Authorization": f"Bearer {key}"} if key else {}


def _verify(spec: RemoteSpec) -> ssl.SSLContext | bool:
    if spec.ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(spec.ca_file))


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _answer_shape(path: str, data: dict[str, Any]) -> bool:
    if path == "/embeddings":
        items = data.get("data")
        return isinstance(items, list) and all(isinstance(i, dict) and "embedding" in i
                                               for i in items)
    choices = data.get("choices")
    return (isinstance(choices, list) and bool(choices) and isinstance(choices[0], dict)
            and isinstance(choices[0].get("message"), dict))


def _has_token(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls")
                                        or delta.get("function_call")):
            return True
        if isinstance(choice, dict) and choice.get("finish_reason"):
            return True
    return False


def _error_message(body: bytes) -> str:
    data = _json_object(body)
    error = data.get("error") if data else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])[:300]
    if isinstance(error, str):
        return error[:300]
    text = body[:300].decode("utf-8", "replace").strip()
    return text or "(empty body)"
