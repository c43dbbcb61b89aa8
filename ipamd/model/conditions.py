"""Status conditions, as every Plexus status writes them (IPAddress, Network, pod networks-status).

A condition's ``lastTransitionTime`` says when its *status* last changed: writing the same status
again, with another reason or message, keeps it (``kubectl get -o yaml`` must not show every
reconcile as a transition).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ipamd.model.timefmt import rfc3339

Condition = dict[str, str]


def condition(ctype: str, ok: bool, reason: str, message: str, since: str) -> Condition:
    return {"type": ctype, "status": "True" if ok else "False", "lastTransitionTime": since,
            "reason": reason, "message": message}


def set_condition(conds: Iterable[Mapping[str, str]], ctype: str, ok: bool, reason: str, message: str,
                  now: float) -> tuple[Condition, ...]:
    """Replace condition ``ctype`` where it stands (a new one goes last), keeping its lastTransitionTime when its
    status did not change: a status written again as it was compares equal, and ``kubectl`` shows a steady order."""
    conds = tuple(conds)
    status = "True" if ok else "False"
    old = next((c for c in conds if c.get("type") == ctype), None)
    since = old.get("lastTransitionTime", "") if old and old.get("status") == status else ""
    new = condition(ctype, ok, reason, message, since or rfc3339(now))
    if old is None:
        return tuple(dict(c) for c in conds) + (new,)
    return tuple(new if c.get("type") == ctype else dict(c) for c in conds)


def drop_condition(conds: Iterable[Mapping[str, str]], ctype: str) -> tuple[Condition, ...]:
    """The conditions without ``ctype``: one that no longer applies goes, rather than staying on, False, for ever."""
    return tuple(dict(c) for c in conds if c.get("type") != ctype)
