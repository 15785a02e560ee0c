"""Which release an app rollback goes back to, and whether its tags can be moved safely (pure).

* :func:`choose_target` picks the target among the known-good releases (newest first): the one an
  operator named (``rollback app --to RELEASE``, a fingerprint prefix), or else the newest
  known-good release that is not running and has not failed a rollback verification — falling
  back to the previous known-good one when the newest failed. With no such release the newest
  known-good release is returned, and the policy's guards say why it may not be used.
* :func:`retag_conflicts` lists why pointing the target's tags back at its image IDs would be
  wrong: one tag the target's services ran with under two different image IDs (the last retag
  would win), or a container outside ``[rollback] services`` (another service of the project, or
  another project) using one of those tags with another image (it would silently pick up the
  target's image on its next recreate). A plan with a conflict is refused.

No I/O: the component passes plain values (from the state store and the engine).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from brace_watchdog.errors import RefusedError
from brace_watchdog.releases import TagUser

__all__ = ["MIN_PREFIX", "Candidate", "TargetChoice", "choose_target", "retag_conflicts"]

MIN_PREFIX = 6


@dataclass(frozen=True)
class Candidate:
    """A known-good release as the chooser sees it."""

    fingerprint: str
    known_good_at: float
    failed_verification_at: float | None = None


@dataclass(frozen=True)
class TargetChoice:
    """The chosen target (None: no known-good release at all), the newest known-good release,
    and a note when the choice is not simply the newest one."""

    target: Candidate | None
    newest: Candidate | None
    requested: bool = False
    note: str = ""


def choose_target(candidates: Sequence[Candidate], current: str | None,
                  requested: str | None = None) -> TargetChoice:
    """The release to roll back to; :class:`RefusedError` when ``requested`` names none."""
    newest = candidates[0] if candidates else None
    if requested is not None:
        return TargetChoice(_resolve(candidates, requested), newest, requested=True)
    usable = [c for c in candidates
              if c.fingerprint != current and c.failed_verification_at is None]
    if newest is None or not usable or usable[0] is newest:
        return TargetChoice(newest, newest)
    target = usable[0]
    why = ("failed a rollback verification" if newest.failed_verification_at is not None
           else "is the running release")
    return TargetChoice(target, newest, note=f"the newest known-good release "
                        f"{newest.fingerprint[:12]} {why}; falling back to the previous "
                        f"known-good release {target.fingerprint[:12]}")


def _resolve(candidates: Sequence[Candidate], requested: str) -> Candidate:
    spec = requested.strip().lower()
    known = ", ".join(c.fingerprint[:12] for c in candidates[:10]) or "none yet"
    if len(spec) < MIN_PREFIX or any(ch not in "0123456789abcdef" for ch in spec):
        raise RefusedError("plan", f"'{requested}' is not a release: give at least "
                           f"{MIN_PREFIX} hex digits of its fingerprint (known-good: {known}; "
                           "see `brace-watchdogctl status`)")
    matches = [c for c in candidates if c.fingerprint.startswith(spec)]
    if not matches:
        raise RefusedError("plan", f"no known-good release starts with {spec} (known-good: "
                           f"{known}); only a release that was known-good can be a target")
    if len(matches) > 1:
        raise RefusedError("plan", f"{spec} matches {len(matches)} known-good releases ("
                           f"{', '.join(c.fingerprint[:16] for c in matches)}); give more digits")
    return matches[0]


def retag_conflicts(retags: Sequence[tuple[str, str]], *, project: str,
                    services: Sequence[str], users: Sequence[TagUser]) -> tuple[str, ...]:
    """Why the ``(tag, image_id)`` retags may not run; empty when they may."""
    wanted: dict[str, set[str]] = {}
    for ref, image_id in retags:
        wanted.setdefault(ref, set()).add(image_id)
    problems = [f"tag {ref} was used by the target release with {len(ids)} different images "
                f"({', '.join(sorted(i[:19] for i in ids))}); one tag cannot point at all of "
                "them — give each service its own tag" for ref, ids in sorted(wanted.items())
                if len(ids) > 1]
    for user in users:
        ids = wanted.get(user.image_ref)
        inside = user.project == project and user.service in services
        if ids is None or inside or user.image_id in ids:
            continue
        who = (f"service {user.service} of project {user.project}" if user.project
               else "a container outside compose")
        problems.append(f"{who} (container {user.name}) also uses {user.image_ref}, now "
                        f"image {user.image_id[:19]}: retagging would switch it to "
                        f"{sorted(ids)[0][:19]} on its next start; add it to [rollback] "
                        "services or give it its own tag")
    return tuple(problems)
