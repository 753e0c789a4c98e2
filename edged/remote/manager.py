"""Applying config bundles: admit, stage, switch, reload, watch health, roll back.

One apply at a time. The order makes a SIGKILL harmless at every step: nothing on disk
changes until the bundle is fully admitted; the new version is written and fsynced before
the pointer moves; the pointer moves by one rename. Until the health window confirms it the
version is a "trial": a restart resumes the window, and a failure switches back to the
previous version and reloads it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edged.config import Config
from edged.errors import Conflict, EdgedError, PayloadTooLarge
from edged.models.contract import GenerateParams, Inference
from edged.remote.admission import build_config, check_keeps, check_paths
from edged.remote.bundle import Bundle, FleetKeys, parse_bundle
from edged.remote.history import History, Outcome
from edged.remote.reload import ReloadTarget, affected, changed_sections, needs_restart
from edged.remote.versions import LOCAL, Entry, Pointer, VersionDir, running_version
from edged.roles import HealthSource

log = logging.getLogger(__name__)

OWN_SECTIONS = ("remote",)


class RolledBack(EdgedError):
    code = "rolled_back"
    status = 422


def _version_of(raw: bytes) -> int | None:
    try:
        return parse_bundle(raw).version
    except EdgedError:
        return None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RemoteManager:
    def __init__(self, config: Config, *, versions: VersionDir, keys: FleetKeys,
                 history: History, targets: Sequence[ReloadTarget],
                 health: Mapping[str, HealthSource], inference: Inference | None = None
                 ) -> None:
        self.config = config
        self._versions = versions
        self._keys = keys
        self._history = history
        self._targets = targets
        self._health = health
        self._inference = inference
        self._lock = asyncio.Lock()
        self._before: Config | None = None  # what a rollback goes back to
        self._window: asyncio.Task[str] | None = None
        self._boot = config  # what the components were built with at startup
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle

    async def run(self) -> None:
        """Resume a health window a restart interrupted; then keep the window tasks."""
        await self.resume()
        try:
            await asyncio.Event().wait()  # the daemon cancels this task at shutdown
        finally:
            for task in list(self._tasks):
                task.cancel()

    async def resume(self) -> None:
        """A version still on trial at startup gets a whole new window. Nothing is known of
        health before it, so any part degraded in the window rolls it back."""
        pointer = await asyncio.to_thread(self._versions.read_pointer)
        active = pointer.active
        if active.state == "trial" and running_version(self.config) == active.version:
            log.info("config v%d is still on trial: its health window starts again",
                     active.version)
            self._start_window(pointer, set())

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def reload(self, config: Config) -> None:
        """Our own section, [remote]: the next pull, window and size check use it."""
        self.config = config

    # -- applying

    async def apply(self, raw: bytes, *, source: str, actor: str,
                    wait: bool = False) -> dict[str, Any]:
        # Admit before the lock: a forged or invalid bundle is refused for what it is, and
        # recorded, even while another version is on trial.
        pointer = await asyncio.to_thread(self._versions.read_pointer)
        bundle, new = await self._admit_or_record(raw, pointer, source, actor)
        if self._lock.locked() or (self._window is not None and not self._window.done()):
            raise Conflict("another config is being applied or is in its health window; "
                           "try again when it is confirmed", code="apply_in_progress")
        async with self._lock:
            # Another apply may have switched while this one was being admitted.
            now = await asyncio.to_thread(self._versions.read_pointer)
            if now != pointer:
                pointer = now
                bundle, new = await self._admit_or_record(raw, pointer, source, actor)
            result = await self._switch(bundle, raw, new, pointer, source, actor)
        if wait:
            outcome = await self.settled()
            if outcome != "confirmed":
                raise RolledBack(f"config v{bundle.version} was rolled back: {outcome}")
            result["state"] = "confirmed"
        return result

    async def _admit_or_record(self, raw: bytes, pointer: Pointer, source: str,
                               actor: str) -> tuple[Bundle, Config]:
        try:
            return await self._admit(raw, pointer)
        except EdgedError as e:
            await self._history.record(Outcome("rejected", _version_of(raw), source,
                                               actor, reason=e.message, code=e.code))
            raise

    async def is_stale(self, raw: bytes) -> bool:
        """Whether a pulled bundle is one this box has already seen (or older)."""
        try:
            bundle = parse_bundle(raw)
        except EdgedError:
            return False
        pointer = await asyncio.to_thread(self._versions.read_pointer)
        return bundle.version <= pointer.highest

    async def _admit(self, raw: bytes, pointer: Pointer) -> tuple[Bundle, Config]:
        limit = self.config.remote.max_bundle_bytes
        if len(raw) > limit:
            raise PayloadTooLarge(f"bundle is {len(raw)} bytes; remote.max_bundle_bytes is "
                                  f"{limit}", code="bundle_too_large")
        bundle = parse_bundle(raw)
        await asyncio.to_thread(self._keys.verify, bundle)
        self._check_target(bundle, pointer)
        source = self._versions.toml_path(bundle.version)
        new = build_config(bundle.config, self.config, source)
        running_text, local = await asyncio.to_thread(self._baselines, pointer)
        check_keeps(bundle.config, new, self.config, running_text)
        await asyncio.to_thread(check_paths, new, self.config, local)
        return bundle, new

    def _baselines(self, pointer: Pointer) -> tuple[str | None, Config | None]:
        """The running document's text and the local file's config, when they can be read:
        what a push must keep, and paths the fleet may always put back."""
        running_text = None
        if self.config.source is not None:
            try:
                running_text = self.config.source.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                log.warning("cannot read the running config %s: %s", self.config.source, e)
        local_file = self._local_file(pointer)
        local = None
        if local_file is not None:
            path = Path(local_file)
            try:
                local = build_config(path.read_text(encoding="utf-8"), self.config, path,
                                     pushed=False)
            except (OSError, UnicodeDecodeError, EdgedError) as e:
                log.warning("cannot read the local config %s: %s", path, e)
        return running_text, local

    def _check_target(self, bundle: Bundle, pointer: Pointer) -> None:
        d = self.config.daemon
        if not bundle.matches(d.device_id, d.device_tags):
            raise Conflict(f"bundle.selector: not for this device ({d.device_id!r}, tags "
                           f"{list(d.device_tags)})", code="not_for_this_device")
        if bundle.version <= pointer.highest:
            raise Conflict(f"bundle.version: {bundle.version} is not newer than "
                           f"{pointer.highest}, the highest version this box has applied "
                           "(replay or downgrade)", code="stale_version")

    async def _switch(self, bundle: Bundle, raw: bytes, new: Config, pointer: Pointer,
                      source: str, actor: str) -> dict[str, Any]:
        sha = await asyncio.to_thread(self._versions.stage, bundle.version, bundle.config, raw)
        entry = Entry(bundle.version, "trial", sha, source, actor, _now(), bundle.key_id,
                      bundle.issued_at)
        previous = replace(pointer.active, state="confirmed")
        trial = Pointer(entry, previous, bundle.version, self._local_file(pointer))
        baseline = self._health_baseline()
        await asyncio.to_thread(self._versions.switch, trial)
        old, self._before = self.config, self.config
        changed = changed_sections(old, new)
        outcome = Outcome("applied", bundle.version, source, actor, key_id=bundle.key_id,
                          detail={"changed": changed})
        await self._history.record(outcome)
        failure = await self._reload(old, new, changed)
        if failure is not None:
            await self._roll_back(trial, failure)
            raise RolledBack(f"config v{bundle.version} was rolled back: {failure}")
        self._start_window(trial, baseline)
        return {"version": bundle.version, "state": "trial", "changed": changed,
                "restart_required": self.restart_required(),
                "health_window_s": new.remote.health_window}

    def _local_file(self, pointer: Pointer) -> str | None:
        if pointer.local_file is not None:
            return pointer.local_file
        src = self.config.source
        return str(src) if src is not None and running_version(self.config) == LOCAL else None

    # -- reloading

    async def _reload(self, old: Config, new: Config, changed: list[str]) -> str | None:
        """Reload the affected components; on a refusal put back the ones already done."""
        done: list[ReloadTarget] = []
        self.config = new
        for target in affected(self._targets, changed):
            try:
                await target.component.reload(new)
            except Exception as e:
                log.warning("%s refused config: %s", target.name, e)
                await self._reload_back(done, old)
                return f"{target.name} refused it: {getattr(e, 'message', e)}"
            done.append(target)
        return await self._probe(old, new, changed)

    async def _reload_back(self, targets: Sequence[ReloadTarget], old: Config) -> None:
        self.config = old
        for target in targets:
            try:
                await target.component.reload(old)
            except Exception:
                log.exception("%s could not take back the previous config", target.name)

    async def _probe(self, old: Config, new: Config, changed: list[str]) -> str | None:
        """A changed model catalog must be able to load the new default model."""
        alias = new.models.default
        if self._inference is None or "models" not in changed or alias is None:
            return None
        spec = new.models.catalog[alias]
        probe: Awaitable[object]
        if spec.kind == "chat":
            probe = self._inference.complete(alias, "ok", GenerateParams(max_tokens=1))
        elif spec.kind == "embedding":
            probe = self._inference.embed(alias, ["ok"])
        else:
            return None  # a classifier: nothing in the Inference contract exercises it
        try:
            await asyncio.wait_for(probe, timeout=max(new.remote.health_window, 1.0))
        except Exception as e:
            await self._reload_back(affected(self._targets, changed), old)
            return f"model {alias!r} cannot load: {getattr(e, 'message', None) or e!r}"
        return None

    # -- the health window

    def _health_baseline(self) -> set[str]:
        return {name for name, part in self._snapshot().items() if part.get("degraded")}

    def _snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: source() for name, source in self._health.items() if name != "remote"}

    def _start_window(self, trial: Pointer, baseline: set[str]) -> None:
        self._window = self._spawn(self._watch(trial, baseline), "config-health-window")

    async def _watch(self, trial: Pointer, baseline: set[str]) -> str:
        window = self.config.remote.health_window
        deadline = time.monotonic() + window
        tick = min(1.0, max(window / 20, 0.05))
        while True:
            sick = {n: p for n, p in self._snapshot().items()
                    if p.get("degraded") and n not in baseline}
            if sick:
                reason = "health degraded: " + ", ".join(f"{n} {p}" for n, p in sick.items())
                await self._roll_back(trial, reason)
                return reason
            if time.monotonic() >= deadline:
                await self._confirm(trial)
                return "confirmed"
            await asyncio.sleep(tick)  # health is polled: the sources are plain functions

    async def _confirm(self, trial: Pointer) -> None:
        async with self._lock:
            confirmed = replace(trial, active=replace(trial.active, state="confirmed"))
            await asyncio.to_thread(self._versions.switch, confirmed)
            self._before = None
            await self._history.record(Outcome("confirmed", trial.active.version,
                                               trial.active.source, "daemon",
                                               key_id=trial.active.key_id))
        log.info("config v%d confirmed healthy", trial.active.version)

    async def _roll_back(self, trial: Pointer, reason: str) -> None:
        previous = trial.previous or Entry(LOCAL)
        back = Pointer(previous, None, trial.highest, trial.local_file)
        await asyncio.to_thread(self._versions.switch, back)
        old = self._before
        if old is None:
            old = await asyncio.to_thread(self._rebuild, back)
        current = self.config
        await self._reload_back(affected(self._targets, changed_sections(current, old)), old)
        self._before = None
        log.error("config v%d rolled back to v%d: %s", trial.active.version, previous.version,
                  reason)
        await self._history.record(Outcome("rolled_back", trial.active.version,
                                           trial.active.source, "daemon",
                                           key_id=trial.active.key_id, reason=reason,
                                           detail={"back_to": previous.version}))

    def _rebuild(self, pointer: Pointer) -> Config:
        """The config a pointer names, when the process no longer holds it (after a
        restart in the middle of a health window)."""
        entry = pointer.active
        if entry.version != LOCAL:
            text = self._versions.read_text(entry)
            return build_config(text, self.config, self._versions.toml_path(entry.version))
        if pointer.local_file is None:
            raise EdgedError("cannot roll back: the local config file is not recorded")
        path = Path(pointer.local_file)
        return build_config(path.read_text(), self.config, path, pushed=False)

    async def settled(self) -> str:
        """Wait for the running health window, if any: "confirmed" or why it rolled back."""
        if self._window is None:
            return "confirmed"
        return await asyncio.shield(self._window)

    # -- reporting

    def restart_required(self) -> list[str]:
        """Sections that differ from what edged started with and that no component took in
        place: they take effect at the next restart."""
        changed = changed_sections(self._boot, self.config)
        return needs_restart(self._targets, changed, OWN_SECTIONS)

    def health(self) -> dict[str, Any]:
        trial = self._window is not None and not self._window.done()
        return {"config_version": running_version(self.config),
                "config_state": "trial" if trial else "confirmed",
                "restart_required": self.restart_required()}

    async def status(self) -> dict[str, Any]:
        pointer = await asyncio.to_thread(self._versions.read_pointer)
        return {
            "device_id": self.config.daemon.device_id,
            "device_tags": list(self.config.daemon.device_tags),
            "running_version": running_version(self.config),
            "active": pointer.to_json()["active"],
            "previous": pointer.to_json()["previous"],
            "highest": pointer.highest,
            "restart_required": self.restart_required(),
            "history": await self._history.recent(20),
        }
