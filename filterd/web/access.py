"""What a logged-in user may see and do: a domain admin only mail for recipients in its domains.

A user with no domains sees everything.  A user with domains sees a quarantined message (or a
verdict of the history) that has at least one recipient in them, and only those recipients; it
may release, delete or train a message only when *every* recipient is in its domains -- a release
delivers to all of them, and a delete removes the message for all of them, so a message shared
with another domain is left to an admin who sees both.
"""

from __future__ import annotations

from collections.abc import Iterable

from filterd.web.passwords import User


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().rstrip(">").lower()


def visible_rcpts(user: User, rcpts: Iterable[str]) -> list[str]:
    rcpts = [str(r) for r in rcpts]
    if not user.domains:
        return rcpts
    return [r for r in rcpts if domain_of(r) in user.domains]


def may_see(user: User, rcpts: Iterable[str]) -> bool:
    return not user.domains or bool(visible_rcpts(user, rcpts))


def may_act(user: User, rcpts: Iterable[str]) -> bool:
    rcpts = list(rcpts)
    if not user.domains:
        return True
    return bool(rcpts) and len(visible_rcpts(user, rcpts)) == len(rcpts)
