"""What the known record Lexicons say, as constants (no schema files at run time).

Where it sits in the flow: `records.transform` asks two questions per
collection (is `createdAt` required? does the time window apply?) and the CLI
uses `DEFAULT_COLLECTIONS` for `--collections`. The values were read by hand
from the bluesky-social/atproto lexicons (`defs.main.type == "record"`); the
test suite re-derives them from those schema files so they cannot drift.
"""

from __future__ import annotations

__all__ = [
    "CREATED_AT_REQUIRED",
    "DEFAULT_COLLECTIONS",
    "KNOWN_COLLECTIONS",
    "RECORD_KEY_TYPES",
    "STATE_COLLECTIONS",
    "window_applies",
]

# collection NSID -> the Lexicon's record key type.
RECORD_KEY_TYPES: dict[str, str] = {
    "app.bsky.actor.profile": "literal:self",
    "app.bsky.actor.status": "literal:self",
    "app.bsky.feed.generator": "any",
    "app.bsky.feed.like": "tid",
    "app.bsky.feed.post": "tid",
    "app.bsky.feed.postgate": "tid",
    "app.bsky.feed.repost": "tid",
    "app.bsky.feed.threadgate": "tid",
    "app.bsky.graph.block": "tid",
    "app.bsky.graph.follow": "tid",
    "app.bsky.graph.list": "tid",
    "app.bsky.graph.listblock": "tid",
    "app.bsky.graph.listitem": "tid",
    "app.bsky.graph.starterpack": "tid",
    "app.bsky.graph.verification": "tid",
    "app.bsky.labeler.service": "literal:self",
    "chat.bsky.actor.declaration": "literal:self",
    "com.atproto.lexicon.schema": "nsid",
}

KNOWN_COLLECTIONS: frozenset[str] = frozenset(RECORD_KEY_TYPES)

# Every app.bsky record type: what `--collections` means when not given.
DEFAULT_COLLECTIONS: frozenset[str] = frozenset(
    c for c in RECORD_KEY_TYPES if c.startswith("app.bsky.")
)

# Collections whose Lexicon lists createdAt under `required`.
CREATED_AT_REQUIRED: frozenset[str] = frozenset(
    {
        "app.bsky.actor.status",
        "app.bsky.feed.generator",
        "app.bsky.feed.like",
        "app.bsky.feed.post",
        "app.bsky.feed.postgate",
        "app.bsky.feed.repost",
        "app.bsky.feed.threadgate",
        "app.bsky.graph.block",
        "app.bsky.graph.follow",
        "app.bsky.graph.list",
        "app.bsky.graph.listblock",
        "app.bsky.graph.listitem",
        "app.bsky.graph.starterpack",
        "app.bsky.graph.verification",
        "app.bsky.labeler.service",
    }
)

# Known collections where createdAt is optional or absent (profile, chat
# declaration, lexicon schema): "state" records, always landed whatever the window.
STATE_COLLECTIONS: frozenset[str] = KNOWN_COLLECTIONS - CREATED_AT_REQUIRED


def window_applies(collection: str) -> bool:
    """Does a --since/--until window filter this collection's records?

    Yes for collections whose Lexicon requires createdAt, and for unknown
    collections (on records that carry a valid createdAt); no for state records.
    """
    return collection not in STATE_COLLECTIONS
