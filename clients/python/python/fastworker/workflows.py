"""Helpers that build workflow descriptions, the dicts ``Client.workflow``
takes (docs/workflows.md describes the format)::

    from fastworker import chain, chord, group, task
    client.workflow(chain(task("add", 1, 2), task("add", 10)))            # (1 + 2) + 10
    client.workflow(chord([task("add", i, i) for i in range(10)], task("sum")))

A chain runs its members one after another, each receiving the previous
result as its first argument (``receive="none"``: not at all;
``receive={"key": "name"}``: as the argument ``name``). A group runs its
members at once; its result is the list of theirs, in order. A chord is a
group, then one task receiving that list.
"""

from typing import Any, Dict, Optional, Sequence, Union

Description = Dict[str, Any]

_OPTIONS = ("receive", "priority", "timeout_ms", "retries", "retry_delay_ms")


def task(name: str, *args: Any, kwargs: Optional[Dict[str, Any]] = None, **options: Any) -> Description:
    """A member running task ``name`` with positional ``args`` (or, with
    ``kwargs``, arguments by name). ``options`` are those of the
    description: ``receive``, ``priority``, ``timeout_ms``, ``retries``,
    ``retry_delay_ms``."""
    if not isinstance(name, str):
        raise TypeError(f"a task name is a str, not {type(name).__name__}")
    if args and kwargs is not None:
        raise TypeError("give a task its arguments by position or by name (kwargs=...), not both")
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"unknown task option(s) {', '.join(unknown)} (allowed: {', '.join(_OPTIONS)})")
    member: Description = {"task": name, "args": dict(kwargs) if kwargs is not None else list(args)}
    member.update({key: value for key, value in options.items() if value is not None})
    return member


def _members(what: str, members: Sequence[Any]) -> list:
    # chain(a, b) and chain([a, b]) alike.
    if len(members) == 1 and isinstance(members[0], (list, tuple)):
        members = members[0]
    for member in members:
        if not isinstance(member, dict):
            raise TypeError(f"a {what}'s members are descriptions (dicts: task(...), chain(...)...), "
                            f"not {type(member).__name__}")
    return list(members)


def chain(*members: Description) -> Description:
    """Members run one after another, each receiving the previous result."""
    return {"chain": _members("chain", members)}


def group(*members: Description) -> Description:
    """Members run at once; the result is the list of theirs, in order."""
    return {"group": _members("group", members)}


def chord(members: Union[Sequence[Description], Description], then: Description) -> Description:
    """The ``members`` (a list, or a ``group(...)``) run at once, then
    ``then`` runs with the list of their results."""
    if isinstance(members, dict):
        if set(members) != {"group"}:
            raise TypeError("a chord's members are a list of descriptions or a group(...)")
        members = members["group"]
    if not isinstance(then, dict):
        raise TypeError(f"a chord's callback is a description (task(...)...), not {type(then).__name__}")
    return {"chord": {"group": _members("chord", list(members)), "then": then}}


__all__ = ["task", "chain", "group", "chord"]
