"""``Inference`` over local and remote aliases: what the agents are given.

A local alias goes to the model manager. A remote alias goes to its server, with its
redactions, audit record and breaker, and to its ``fallback`` when the server cannot answer.
Two things never go out: a request marked ``local_only`` (an agent with ``phi = true``:
refused here, again, whatever the config validation let through) and a grammar-constrained
one (an OpenAI server takes no GBNF), which its fallback answers instead.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from edged.errors import BadRequest, Forbidden
from edged.models.contract import GenerateParams, Generation
from edged.models.manager import ModelManager
from edged.models.remote import RemoteFailure, RemoteModel
from edged.models.remotes import RemoteModels

log = logging.getLogger(__name__)


class HybridInference:
    def __init__(self, local: ModelManager, remotes: RemoteModels) -> None:
        self._local = local
        self._remotes = remotes

    def aliases(self) -> Sequence[str]:
        return [*self._local.aliases(), *(m["id"] for m in self._remotes.catalog_view())]

    def is_remote(self, alias: str) -> bool:
        return self._remotes.get(alias) is not None

    async def chat(self, alias: str, messages: Sequence[dict[str, Any]],
                   params: GenerateParams) -> Generation:
        remote = self._remote(alias, params)
        if remote is None:
            return await self._local.chat(alias, messages, params)
        if params.grammar is not None:
            return await self._fall_back(remote, "grammar", messages, params, None)
        body = {"messages": list(messages), "max_tokens": params.max_tokens,
                "temperature": params.temperature, "top_p": params.top_p,
                "stop": list(params.stop) or None, "seed": params.seed}
        _out, rec = remote.chat_body(body, params.origin or "daemon")
        try:
            data = await remote.post("/chat/completions", rec)
        except RemoteFailure as e:
            return await self._fall_back(remote, e.reason, messages, params, e)
        self._remotes.metrics.served.labels(alias, alias).inc()
        return _generation(data)

    def stream_chat(self, alias: str, messages: Sequence[dict[str, Any]],
                    params: GenerateParams) -> AsyncIterator[str]:
        return self._pieces(alias, messages, params)

    async def _pieces(self, alias: str, messages: Sequence[dict[str, Any]],
                      params: GenerateParams) -> AsyncIterator[str]:
        """Agents want the whole checked reply anyway; a remote one arrives in one piece."""
        if self._remote(alias, params) is None:
            async for piece in self._local.stream_chat(alias, messages, params):
                yield piece
            return
        yield (await self.chat(alias, messages, params)).text

    async def complete(self, alias: str, prompt: str, params: GenerateParams) -> Generation:
        remote = self._remote(alias, params)
        if remote is None:
            return await self._local.complete(alias, prompt, params)
        if remote.spec.fallback is None:
            raise BadRequest(f"model {alias!r} is remote and raw completion is not sent to "
                             "remote servers; give it a local fallback",
                             code="remote_unsupported")
        remote.fell_back("completion")
        return await self._local.complete(remote.spec.fallback, prompt, params)

    async def embed(self, alias: str, texts: Sequence[str]) -> list[list[float]]:
        remote = self._remotes.get(alias)
        if remote is None:
            return await self._local.embed(alias, texts)
        _out, rec = remote.embedding_body({"input": list(texts)}, "daemon")
        data = await remote.post("/embeddings", rec)
        rows = sorted(data["data"], key=lambda item: int(item.get("index", 0)))
        return [[float(x) for x in row["embedding"]] for row in rows]

    def _remote(self, alias: str, params: GenerateParams) -> RemoteModel | None:
        remote = self._remotes.get(alias)
        if remote is not None and params.local_only:
            log.error("refused: %s asked remote model %r for protected health information",
                      params.origin or "a caller", alias)
            raise Forbidden(f"model {alias!r} is remote, and this request carries protected "
                            "health information (phi = true): it never leaves the box",
                            code="phi_local_only")
        return remote

    async def _fall_back(self, remote: RemoteModel, reason: str,
                         messages: Sequence[dict[str, Any]], params: GenerateParams,
                         error: RemoteFailure | None) -> Generation:
        fallback = remote.spec.fallback
        if fallback is None:
            if error is not None:
                raise error
            raise BadRequest(f"model {remote.spec.alias!r} is remote and takes no grammar; "
                             "give it a local fallback", code="remote_unsupported")
        remote.fell_back(reason)
        self._remotes.metrics.served.labels(remote.spec.alias, fallback).inc()
        return await self._local.chat(fallback, messages, params)


def _generation(data: dict[str, Any]) -> Generation:
    choice = data["choices"][0]
    raw = data.get("usage")
    usage: dict[str, Any] = raw if isinstance(raw, dict) else {}
    content = choice["message"].get("content")
    return Generation(text=content if isinstance(content, str) else "",
                      finish_reason=str(choice.get("finish_reason") or "stop"),
                      prompt_tokens=int(usage.get("prompt_tokens") or 0),
                      completion_tokens=int(usage.get("completion_tokens") or 0))
