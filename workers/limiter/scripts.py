"""The limiter's Lua scripts, read from package data and registered once per client.

``register_script`` returns a callable that sends ``EVALSHA`` and falls back to ``SCRIPT LOAD`` when the
server does not know the script yet (after a restart or a ``SCRIPT FLUSH``), so registering once at
construction is enough. The same objects work on real Redis and on ``fakeredis.FakeRedis`` (Lua via
lupa), which is what lets the embedded mode and the tests share one implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.commands.core import Script


@cache
def lua_source(name: str) -> str:
    """The text of ``name`` (e.g. ``"acquire.lua"``), shipped beside this module."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class LimiterScripts:
    """The scripts, registered on one client."""

    acquire: Script
    cooldown: Script
    state: Script
    adapt: Script

    @classmethod
    def register(cls, client: Any) -> LimiterScripts:
        return cls(
            acquire=client.register_script(with_share("acquire.lua")),
            cooldown=client.register_script(lua_source("cooldown.lua")),
            state=client.register_script(with_share("state.lua")),
            adapt=client.register_script(with_share("adapt.lua")),
        )


def with_share(name: str) -> str:
    """``name`` with ``share.lua`` (the adaptive share, one definition) in front of it."""
    return lua_source("share.lua") + "\n" + lua_source(name)
