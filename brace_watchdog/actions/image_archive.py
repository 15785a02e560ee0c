"""Known-good images that survive ``docker system prune -af``: saved archives, checked every cycle.

A tag does not keep an image alive against ``docker image prune -a`` / ``docker system prune -a``
(they remove every image no container uses, tagged or not), and a stopped "holder" container is
removed by ``system prune`` before the images are. A *running* holder would protect the image,
but it needs a long-running command inside an arbitrary application image (a distroless image
has none) and costs a process per image. So the daemon keeps each known-good image as a
``docker save`` archive in its state folder (``<state dir>/images/<id>.tar``, written to a
temporary name of its own process and renamed): it survives any prune and is loaded back
(``docker load``, which keeps the image ID) by the rollback when the engine lost the image.
The cost is disk: only the images of the releases still kept (the pinned ones) are archived,
each image ID once.

:func:`classify` (pure) sorts the images a rollback may need into present / archived only /
missing; every cycle :mod:`~brace_watchdog.actions.node_images` exports that
(``brace_known_good_images{state}``) so a missing one raises ``BraceKnownGoodImagesMissing``
before a rollback needs it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from brace_watchdog.adapters.docker import DockerAdapter
from brace_watchdog.errors import AdapterError

__all__ = ["ImageArchive", "ImageCheck", "archive_folder", "classify"]


def archive_folder(state_path: Path) -> Path:
    """Where the archives live: ``images/`` beside the state file."""
    return state_path.parent / "images"


@dataclass(frozen=True)
class ImageCheck:
    """Image IDs a rollback may need, by whether the engine still has them."""

    present: tuple[str, ...] = ()
    archived_only: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()


def classify(needed: Iterable[str], in_engine: set[str], archived: set[str]) -> ImageCheck:
    """Present in the engine; else loadable from an archive; else missing."""
    ids = sorted(set(needed))
    return ImageCheck(present=tuple(i for i in ids if i in in_engine),
                      archived_only=tuple(i for i in ids
                                          if i not in in_engine and i in archived),
                      missing=tuple(i for i in ids if i not in in_engine and i not in archived))


class ImageArchive:
    """``docker save`` / ``docker load`` of image IDs into one folder (worker threads)."""

    def __init__(self, docker: DockerAdapter, folder: Path) -> None:
        self._docker = docker
        self.folder = folder

    def path(self, image_id: str) -> Path:
        return self.folder / f"{image_id.removeprefix('sha256:')}.tar"

    def archived(self) -> set[str]:
        """Image IDs with an archive (a non-empty ``<id>.tar``)."""
        if not self.folder.is_dir():
            return set()
        return {f"sha256:{p.stem}" for p in self.folder.glob("*.tar") if p.stat().st_size > 0}

    async def keep(self, image_ids: Iterable[str]) -> list[str]:
        """Archive every image not archived yet; the IDs saved now (AdapterError on failure)."""
        saved = []
        for image_id in sorted(set(image_ids) - await asyncio.to_thread(self.archived)):
            target = self.path(image_id)
            # per process: instances sharing a state folder may save the same image at once
            partial = target.with_suffix(f".{os.getpid()}.partial")
            await asyncio.to_thread(self.folder.mkdir, parents=True, exist_ok=True, mode=0o700)
            try:
                await self._docker.save_image(image_id, partial)
                await asyncio.to_thread(os.replace, partial, target)
            except (AdapterError, OSError) as exc:
                await asyncio.to_thread(partial.unlink, missing_ok=True)
                raise AdapterError(f"cannot archive {image_id[:19]} to {target}: {exc}") from None
            saved.append(image_id)
        return saved

    async def drop_except(self, keep: Iterable[str]) -> list[str]:
        """Remove the archives of images no kept release needs; the IDs removed."""
        wanted = set(keep)
        gone = sorted(await asyncio.to_thread(self.archived) - wanted)
        for image_id in gone:
            await asyncio.to_thread(self.path(image_id).unlink, missing_ok=True)
        return gone

    async def restore(self, image_id: str) -> bool:
        """Load ``image_id`` from its archive; False when there is none (AdapterError when the
        load fails or brings another image)."""
        path = self.path(image_id)
        if not path.is_file():
            return False
        loaded = await self._docker.load_image(path)
        if image_id not in loaded:
            raise AdapterError(f"{path} loaded {loaded}, not {image_id[:19]}")
        return True
