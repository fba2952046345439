"""Redis key layout of the limiter: every key lives under ``{prefix}:limiter:{<pool>}:``.

The pool is wrapped in braces, a Redis Cluster hash tag, so all keys of one pool share a slot and
one script may touch them together. Only ``limits`` is permanent; every other key carries a PEXPIRE
set by the script that writes it, so an idle pool leaves nothing else behind.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Key suffixes, in the order the scripts receive them as KEYS[1..n].
SUFFIXES: tuple[str, ...] = (
    "limits",  # HASH  rpm ipm tpm rpd concurrency                     (permanent)
    "cooldown",  # HASH  until (µs) reason                               (expires at until)
    "rpm",  # STRING GCRA: scheduled time of the last admission (µs) (61 s after it)
    "ipm",  # ZSET   sliding log: member "seq:images", score µs         (60 s after last write)
    "tpm",  # ZSET   sliding log: member "seq:tokens", score µs         (60 s after last write)
    "sums",  # HASH  ipm tpm (running sums of the logs) seq              (60 s after last write)
    "day",  # HASH  start (µs of the Pacific midnight) used             (after the day ends)
    "inflight",  # ZSET holder -> lease expiry µs                        (at the last lease)
    "usage",  # HASH  m (minute index) r i t pr pi pt: two minute buckets (120 s after last write)
    "adapt",  # HASH  low at hold rise drops: the adaptive share (a minute after it is whole again)
    "requests",  # ZSET sliding log of admissions (pools with rpm): "seq:1", score µs (60 s after)
)


@dataclass(frozen=True)
class PoolKeys:
    """The keys of one pool under one prefix."""

    prefix: str
    pool: str

    @property
    def base(self) -> str:
        return f"{self.prefix}:limiter:{{{self.pool}}}:"

    def __getattr__(self, suffix: str) -> str:
        if suffix in SUFFIXES:
            return self.base + suffix
        raise AttributeError(suffix)

    def all(self) -> list[str]:
        """Every key, in script KEYS order."""
        return [self.base + suffix for suffix in SUFFIXES]


def scan_pattern(prefix: str) -> str:
    """A SCAN pattern matching every limiter key under ``prefix`` (glob characters escaped)."""
    escaped = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in prefix)
    return f"{escaped}:limiter:{{*}}:*"


def pool_of(key: str, prefix: str) -> str | None:
    """The pool a limiter key belongs to, or ``None`` for a key that is not one of ours."""
    head = f"{prefix}:limiter:{{"
    if not key.startswith(head):
        return None
    pool, sep, suffix = key[len(head) :].rpartition("}:")
    return pool if sep and suffix in SUFFIXES else None
