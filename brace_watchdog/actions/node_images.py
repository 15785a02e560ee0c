"""The known-good images on this instance's node: pinned, archived, loaded back, released.

:class:`NodeImages` is the I/O side of :mod:`~brace_watchdog.actions.image_upkeep`, over the
engine of the node the instance runs on (``[rollback] node_docker_host``; by default the engine
the rollback talks to). At promotion it pins the release's images under daemon-owned tags and
saves them as archives (:mod:`~brace_watchdog.actions.image_archive`) and releases the pins and
archives of releases no longer kept. Every cycle of every instance, leader or follower,
:meth:`NodeImages.upkeep` lists the node's images once and carries out the plan — pins made
again, archives written, and with the Swarm driver images loaded back from their archives —
recording each change (``release.pinned``, ``release.archived``, ``release.image_loaded``) and
each failure once until it clears (``release.pin_failed``, ``release.archive_failed``,
``release.image_load_failed``, ``release.upkeep_failed``), and exporting
``brace_known_good_images{state}``, ``brace_known_good_images_held`` and
``brace_known_good_images_loaded_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from brace_watchdog.actions import image_upkeep
from brace_watchdog.actions.image_archive import ImageArchive, archive_folder
from brace_watchdog.actions.image_upkeep import Pin, Upkeep
from brace_watchdog.actions.rollback_steps import split_ref
from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.errors import AdapterError
from brace_watchdog.releases import Release, pin_tag
from brace_watchdog.runtime import Hub
from brace_watchdog.state import ReleaseRecord

__all__ = ["NodeImages", "pins_of"]

SOURCE = "rollback"


def pins_of(project: str, release: Release, fingerprint: str | None = None) -> list[Pin]:
    """The pins that keep ``release``'s images alive (one per service)."""
    fp = fingerprint or release.fingerprint
    return [Pin(fp, s.image_id, ":".join(pin_tag(project, s.service, fp)))
            for s in release.services]


class NodeImages:
    """Pins, archives and loads back the kept known-good images in ``node``'s engine."""

    def __init__(self, hub: Hub, node: DockerAdapter, *, load_back: bool) -> None:
        self.hub = hub
        self.node = node
        self.load_back = load_back
        self.archive = ImageArchive(node, archive_folder(hub.config.daemon.state_path))
        self._reported: set[tuple[str, str]] = set()  # failures recorded and not cleared yet

    # -- at promotion ----------------------------------------------------------------------
    async def pin(self, project: str, release: Release) -> list[str]:
        """Pin ``release``'s images; the refs pinned (a failure is recorded)."""
        pinned, failed = await self._tag(pins_of(project, release))
        for pin, why in failed:
            self.hub.record("release.pin_failed", SOURCE, f"cannot pin {pin.image_id[:19]}: "
                            f"{why}", severity="warning")
        return pinned

    async def archive_release(self, release: Release) -> bool:
        """Save the release's images as archives (a failure is recorded, and shows in the
        ``brace_known_good_images{state="missing"}`` check once the engine loses the image)."""
        try:
            await self.archive.keep(release.image_ids().values())
        except AdapterError as exc:
            self.hub.record("release.archive_failed", SOURCE, f"cannot archive the images of "
                            f"{release.short}: {exc}", severity="warning")
            return False
        return True

    async def release_old(self, project: str, kept: Sequence[ReleaseRecord]) -> None:
        """Drop the archives and pins of the releases no longer ``kept``."""
        with contextlib.suppress(AdapterError, OSError):
            await self.archive.drop_except(kept_image_ids(kept))
        pinned = {r.fingerprint: r for r in self.hub.store.pinned_releases()}
        for fingerprint in image_upkeep.releases_to_unpin(pinned, {r.fingerprint for r in kept}):
            removed = []
            for pin in pins_of(project, Release.from_dict(pinned[fingerprint].release),
                               fingerprint):
                with contextlib.suppress(AdapterError):
                    if await self.node.remove_image_tag(pin.ref):
                        removed.append(pin.ref)
            self.hub.store.set_release_pinned(fingerprint, False)
            self.hub.record("release.unpinned", SOURCE, f"released the pins of "
                            f"{fingerprint[:12]} (no longer needed)",
                            evidence={"removed": removed})

    # -- every cycle -----------------------------------------------------------------------
    async def upkeep(self, project: str, kept: Sequence[ReleaseRecord]) -> Upkeep | None:
        """Keep ``kept``'s images on this node; the plan carried out (None when the node's
        engine or the archive folder cannot be read: recorded once, nothing held)."""
        pins = [p for r in kept
                for p in pins_of(project, Release.from_dict(r.release), r.fingerprint)]
        try:
            tags, archived = await asyncio.gather(self.node.image_tags(),
                                                  asyncio.to_thread(self.archive.archived))
        except (AdapterError, OSError) as exc:
            self._failure("release.upkeep_failed", "", f"cannot look at the known-good images "
                          f"on this node: {exc}")
            self.hub.metrics.known_good_images_held.set(0)
            return None
        self._cleared("release.upkeep_failed", "")
        plan = image_upkeep.plan_upkeep(pins, image_upkeep.NodeHoldings(tags, frozenset(archived)),
                                       load=self.load_back)
        failed = await self._load(plan.load)
        pinning = [p for p in plan.pin if p.image_id not in failed]  # not those not loaded
        _, pin_failed = await self._tag(pinning)
        self._pins_done(pinning, {p.ref for p, _ in pin_failed})
        await self._archive(plan.archive)
        loaded = [i for i in plan.load if i not in failed]
        ready = image_upkeep.held(plan, failed | {p.image_id for p, _ in pin_failed},
                                  archive_suffices=not self.load_back)
        self._export(plan, loaded, ready)
        return plan

    async def _load(self, image_ids: Sequence[str]) -> set[str]:
        """Load each image back from its archive; the IDs that failed."""
        failed, loaded = set(), []
        for image_id in image_ids:
            try:
                if not await self.archive.restore(image_id):
                    raise AdapterError("its archive is gone")
            except (AdapterError, OSError) as exc:
                failed.add(image_id)
                self._failure("release.image_load_failed", image_id,
                              f"cannot load the known-good image {image_id[:19]} back from "
                              f"its archive on this node: {exc}")
                continue
            self._cleared("release.image_load_failed", image_id)
            loaded.append(image_id)
        if loaded:
            self.hub.metrics.known_good_images_loaded.inc(len(loaded))
            self.hub.record("release.image_loaded", SOURCE, f"loaded {len(loaded)} known-good "
                            f"image(s) back from the archive on this node (its engine had "
                            f"lost them): {', '.join(i[:19] for i in loaded)}",
                            severity="warning", evidence={"loaded": loaded})
        return failed

    async def _tag(self, pins: Sequence[Pin]) -> tuple[list[str], list[tuple[Pin, str]]]:
        """Point each pin's tag at its image; (refs pinned, (pin, why) failed)."""
        pinned: list[str] = []
        failed: list[tuple[Pin, str]] = []
        for pin in pins:
            repository, tag = split_ref(pin.ref)
            try:
                await self.node.tag_image(pin.image_id, repository, tag)
                pinned.append(pin.ref)
            except AdapterError as exc:
                failed.append((pin, str(exc)))
        return pinned, failed

    def _pins_done(self, pins: Sequence[Pin], failed: set[str]) -> None:
        done = [p for p in pins if p.ref not in failed]
        for pin in pins:
            if pin.ref in failed:
                self._failure("release.pin_failed", pin.ref, f"cannot pin the known-good "
                              f"image {pin.image_id[:19]} as {pin.ref} on this node")
            else:
                self._cleared("release.pin_failed", pin.ref)
        for fingerprint in sorted({p.fingerprint for p in done}):
            self.hub.store.set_release_pinned(fingerprint, True)
        if done:
            self.hub.record("release.pinned", SOURCE, f"pinned known-good image(s) again on "
                            f"this node: {', '.join(p.ref for p in done)}",
                            evidence={"pins": [p.ref for p in done]})

    async def _archive(self, image_ids: Sequence[str]) -> None:
        saved: list[str] = []
        for image_id in image_ids:
            try:
                saved += await self.archive.keep([image_id])
            except AdapterError as exc:
                self._failure("release.archive_failed", image_id, str(exc))
                continue
            self._cleared("release.archive_failed", image_id)
        if saved:
            self.hub.record("release.archived", SOURCE, f"archived known-good image(s) on "
                            f"this node: {', '.join(i[:19] for i in saved)}",
                            evidence={"archived": saved})

    def _failure(self, kind: str, key: str, message: str) -> None:
        """Record a failure once until it clears (the upkeep retries it every cycle)."""
        if (kind, key) not in self._reported:
            self._reported.add((kind, key))
            self.hub.record(kind, SOURCE, message, severity="warning", evidence={"key": key})

    def _cleared(self, kind: str, key: str) -> None:
        self._reported.discard((kind, key))

    def _export(self, plan: Upkeep, loaded: Sequence[str], ready: bool) -> None:
        gauge = self.hub.metrics.known_good_images
        check = plan.check
        archived_only = [i for i in check.archived_only if i not in loaded]
        for state, count in (("present", len(check.present) + len(loaded)),
                             ("archived_only", len(archived_only)),
                             ("missing", len(check.missing))):
            gauge.labels(state=state).set(count)
        self.hub.metrics.known_good_images_held.set(1 if ready else 0)


def kept_image_ids(kept: Sequence[ReleaseRecord]) -> set[str]:
    """The image IDs of the ``kept`` known-good releases."""
    return {image for record in kept
            for image in Release.from_dict(record.release).image_ids().values()}
