"""What each instance does to keep the known-good images on its own node (pure).

On a Swarm without a registry every node holds its own copy of each image, and Swarm starts a
rollback's tasks on whichever node it likes: the acting instance can pin, archive and load back
images only in the engine of the node it runs on. So every instance, leader or follower, looks
every cycle at the images of the kept known-good releases on *its* node (the engine's images
with their tags, and the archives beside its state file) and :func:`plan_upkeep` says what to do:

* **load** an image the engine lost but the archive holds (``driver = "swarm"`` only: with
  compose the rollback, which runs on this host, loads it when it needs it);
* **pin** an image the engine holds (or is about to load) whose daemon-owned pin tag is gone;
* **archive** an image the engine holds that has no archive yet;
* the rest is **missing**: neither in the engine nor archived — nothing here can bring it back.

All of it is node-local and non-destructive: it changes nothing the app runs, so a follower
does it as well as the leader. :func:`releases_to_unpin` says which releases' pins an instance
releases (those it pinned that fell out of its kept known-good releases), and :func:`held`
whether the node is ready for a rollback to every kept release (``brace_known_good_images_held``).
No I/O; tested exhaustively in ``tests/unit/test_image_upkeep.py``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from brace_watchdog.actions.image_archive import ImageCheck, classify

__all__ = ["NodeHoldings", "Pin", "Upkeep", "held", "plan_upkeep", "releases_to_unpin"]

IMAGE_ID = "sha256:"


@dataclass(frozen=True)
class Pin:
    """One daemon-owned tag that keeps a kept known-good release's image alive."""

    fingerprint: str
    image_id: str
    ref: str  # repository:tag


@dataclass(frozen=True)
class NodeHoldings:
    """What this node has: each image ID in its engine with its tags, and the archived IDs."""

    tags: Mapping[str, frozenset[str]]
    archived: frozenset[str]


@dataclass(frozen=True)
class Upkeep:
    """The work for this cycle, and the images as they were found (``check``)."""

    check: ImageCheck
    load: tuple[str, ...] = ()
    pin: tuple[Pin, ...] = ()
    archive: tuple[str, ...] = ()

    @property
    def idle(self) -> bool:
        return not (self.load or self.pin or self.archive)


def plan_upkeep(pins: Sequence[Pin], node: NodeHoldings, *, load: bool) -> Upkeep:
    """What keeps ``pins``' images on this node: load (when ``load``), pin, archive. Only
    images a release names by ID are kept (a Swarm tag is named by the ID it resolved to): a
    Swarm spec naming a registry digest (or a tag nothing resolved) is the registry's to
    serve, and a ``docker load`` by ID would not bring its name back."""
    pins = [p for p in pins if p.image_id.startswith(IMAGE_ID)]
    check = classify((p.image_id for p in pins), set(node.tags), set(node.archived))
    loading = check.archived_only if load else ()
    there = set(check.present) | set(loading)
    return Upkeep(
        check=check, load=loading,
        pin=tuple(sorted({p for p in pins if p.image_id in there
                          and p.ref not in node.tags.get(p.image_id, frozenset())},
                         key=lambda p: (p.ref, p.image_id))),
        archive=tuple(i for i in check.present if i not in node.archived))


def held(upkeep: Upkeep, failed: Collection[str], *, archive_suffices: bool) -> bool:
    """Whether, after the upkeep, every kept image is ready for a rollback on this node: in
    the engine (or, with ``archive_suffices`` — compose, whose rollback loads it on this host
    — in the archive), and no load or pin of it ``failed`` (image IDs)."""
    if upkeep.check.missing or set(failed):
        return False
    return archive_suffices or set(upkeep.load) >= set(upkeep.check.archived_only)


def releases_to_unpin(pinned: Iterable[str], keep: Collection[str]) -> list[str]:
    """The fingerprints among ``pinned`` (releases this instance pinned) no longer kept."""
    return sorted(set(pinned) - set(keep))
