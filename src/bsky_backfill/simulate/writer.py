"""Writes one account's repository: which records, when, with which rkeys.

Where this sits: `generator.py` runs one `RepoWriter` per account. Record
times are drawn between the account's creation and the scenario's end; each
record gets a TID rkey from its own createdAt instant; a small share is made
invalid on purpose; each value is DAG-CBOR encoded once and hashed, its truth
row written from the Python value, and the lot handed to `car.build_repo`.
Everything random comes from one `random.Random` per account, seeded from the
scenario seed and the account index, so accounts can be built in any order
or process and still come out identical.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

import libipld

from bsky_backfill.simulate.accounts import SimAccount
from bsky_backfill.simulate.car import RepoImage, build_repo
from bsky_backfill.simulate.content import (
    CHAT_DECLARATION,
    EXAMPLE_THING,
    LIKE,
    LIST,
    LISTITEM,
    POST,
    PROFILE,
    Content,
    Pools,
    PostRef,
)
from bsky_backfill.simulate.damage import Damage, plan_damage
from bsky_backfill.simulate.ids import cid_for_block, datetime_to_micros, format_utc, tid
from bsky_backfill.simulate.scenario import Scenario
from bsky_backfill.simulate.truth import CREATED_AT_OPTIONAL, CREATED_AT_REQUIRED, RecordTruth

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_BAD_DATES = ("not-a-date", "2024-02-30T12:00:00.000Z", "yesterday", "2024-13-01T00:00:00Z", "")
_OFFSETS = [dt.timezone(dt.timedelta(hours=h)) for h in (-8, -5, -3, 1, 2, 5, 9)]


@dataclass
class AccountOut:
    """One account's built repo, its truth rows and the CIDs of its unreachable blocks."""

    repo: RepoImage
    records: list[RecordTruth]
    orphans: list[str] = field(default_factory=list)
    damage: Damage | None = None
    """How the repo was damaged (`damage.py`), when the account asked for it."""


class RepoWriter:
    """Writes one account's records: times, rkeys, createdAt strings, invalid ones."""

    def __init__(self, scenario: Scenario, acct: SimAccount, pools: Pools) -> None:
        self.scenario = scenario
        self.acct = acct
        self.rng = random.Random(f"{scenario.seed}:repo:{acct.index}")
        self.content = Content(self.rng, pools, acct.did)
        self.pools = pools
        self.items: list[tuple[str, bytes, bytes]] = []
        self.truths: list[RecordTruth] = []
        self.keys: set[str] = set()

    def created_at(self, micros: int) -> tuple[str, int]:
        """A createdAt string for `micros`, mostly `...sssZ`, and the instant (us) it names."""
        r = self.rng.random()
        if r < 0.9:
            when = micros - micros % 1000
            return format_utc(when, 3), when
        if r < 0.94:
            return format_utc(micros, 6), micros
        if r < 0.97:
            when = micros - micros % 1_000_000
            return format_utc(when, 0), when
        when = micros - micros % 1000
        moment = _EPOCH + dt.timedelta(microseconds=when)
        local = moment.astimezone(self.rng.choice(_OFFSETS))
        return local.isoformat(timespec="milliseconds"), when

    def rkey(self, collection: str, micros: int) -> str:
        clock = self.rng.getrandbits(10)
        while True:
            key = tid(micros, clock)
            if f"{collection}/{key}" not in self.keys:
                return key
            micros += 1

    def add(
        self, collection: str, rkey: str, value: dict[str, Any], when: int | None
    ) -> tuple[str, str]:
        """Maybe spoil, encode and record one record; returns (uri, cid string)."""
        reason = None
        if self.scenario.invalid_rate and self.rng.random() < self.scenario.invalid_rate:
            reason, when = self._spoil(collection, value, when)
        data = libipld.encode_dag_cbor(value)
        cid = cid_for_block(data)
        key = f"{collection}/{rkey}"
        self.keys.add(key)
        self.items.append((key, cid, data))
        uri = f"at://{self.acct.did}/{key}"
        cid_s = libipld.encode_cid(cid)
        self.truths.append(_truth(uri, self.acct.did, collection, rkey, cid_s, when, value, reason))
        return uri, cid_s

    def _spoil(
        self, collection: str, value: dict[str, Any], when: int | None
    ) -> tuple[str | None, int | None]:
        """Make `value` invalid for its lexicon; returns (reason, createdAt instant left)."""
        if collection in CREATED_AT_REQUIRED:
            kind = self.rng.randrange(3)
        elif collection in CREATED_AT_OPTIONAL:
            kind = 2
        else:
            return None, when  # no lexicon, no rule to break
        if kind == 0:
            del value["createdAt"]
            return "missing createdAt", None
        if kind == 1:
            value["createdAt"] = self.rng.choice(_BAD_DATES)
            return "unparseable createdAt", None
        value["$type"] = LIKE if collection != LIKE else POST
        return "wrong $type", when

    def write(self) -> AccountOut:
        """Generate the account's records in time order, then build its signed CAR."""
        acct, rng, content, scenario = self.acct, self.rng, self.content, self.scenario
        end = datetime_to_micros(scenario.end)
        size = acct.size
        if size > 0 and rng.random() < 0.9:
            size -= 1
            if rng.random() < 0.7:  # createdAt is optional on profiles
                ca_s, when = self.created_at(acct.created_us)
                self.add(PROFILE, "self", content.profile(ca_s), when)
            else:
                self.add(PROFILE, "self", content.profile(None), None)
        first, span = acct.created_us, max(end - acct.created_us, 1)
        rand = rng.random
        times = sorted([first + int(rand() * span) for _ in range(size)])
        names, cum = _cum_weights(scenario)
        picks = rng.choices(names, cum_weights=cum, k=size) if size else []
        has_declaration = False
        for micros, collection in zip(times, picks, strict=True):
            if collection == LISTITEM and not content.own_lists:
                collection = LIST
            if collection == CHAT_DECLARATION:
                if has_declaration:
                    collection = LIKE
                else:
                    has_declaration = True
                    self.add(CHAT_DECLARATION, "self", content.chat_declaration(), None)
                    continue
            ca_s, when = self.created_at(micros)
            rkey = self.rkey(collection, micros)
            if collection == POST:
                value, parent = content.post(ca_s)
                uri, cid = self.add(POST, rkey, value, when)
                ref = PostRef(uri, cid, uri, cid)
                if parent is not None:
                    ref = PostRef(uri, cid, parent.root_uri, parent.root_cid)
                content.own_posts.append(ref)
                self.pools.add_post(ref, rng)
            elif collection == LIST:
                uri, _ = self.add(LIST, rkey, content.list(ca_s), when)
                content.own_lists.append(uri)
            elif collection == EXAMPLE_THING:
                thing_ca = (ca_s, when) if rng.random() < 0.5 else (None, None)
                self.add(EXAMPLE_THING, rkey, content.thing(thing_ca[0]), thing_ca[1])
            else:
                self.add(collection, rkey, getattr(content, _METHOD[collection])(ca_s), when)
        orphans = self._orphans(end)
        last = times[-1] if times else acct.created_us
        rev = tid(last + rng.randint(1_000_000, 3_600_000_000), rng.getrandbits(10))
        self.items.sort(key=lambda item: item[0])
        damage = plan_damage(acct.damage, acct.did, self.items, self.truths)
        repo = build_repo(
            acct.did,
            rev,
            damage.items,
            acct.signing_key,
            orphans=orphans,
            block_order=scenario.block_order,
            **damage.options,
        )
        orphan_cids = [libipld.encode_cid(c) for c, _ in orphans]
        if damage.kind is None:
            return AccountOut(repo, self.truths, orphan_cids)
        damage.items = []  # not needed any more: keep pickles to builder processes small
        return AccountOut(repo, self.truths, orphan_cids, damage)

    def _orphans(self, end: int) -> list[tuple[bytes, bytes]]:
        """Blocks of 'deleted' posts an old export might still carry, unreachable from the MST."""
        if not self.scenario.orphan_rate or self.rng.random() >= self.scenario.orphan_rate:
            return []
        out = []
        for _ in range(self.rng.randint(1, 3)):
            micros = self.rng.randint(self.acct.created_us, end)
            value, _ = self.content.post(self.created_at(micros)[0])
            value["text"] = "deleted " + value["text"]
            data = libipld.encode_dag_cbor(value)
            out.append((cid_for_block(data), data))
        return out


_METHOD = {
    "app.bsky.feed.like": "like",
    "app.bsky.feed.repost": "repost",
    "app.bsky.graph.follow": "follow",
    "app.bsky.graph.block": "block",
    "app.bsky.graph.listitem": "listitem",
}


def _cum_weights(scenario: Scenario) -> tuple[list[str], list[float]]:
    names = sorted(scenario.collection_weights)
    unknown = [n for n in names if n not in _METHOD and n not in _SPECIAL]
    if unknown:
        raise ValueError(f"the simulation cannot write collections {unknown}")
    return names, list(itertools.accumulate(scenario.collection_weights[n] for n in names))


_SPECIAL = frozenset({POST, LIST, EXAMPLE_THING, CHAT_DECLARATION})


def _truth(
    uri: str,
    did: str,
    collection: str,
    rkey: str,
    cid: str,
    when: int | None,
    value: dict[str, Any],
    reason: str | None,
) -> RecordTruth:
    """The truth row for one record, read from the value as written (not as decoded)."""
    subject = value.get("subject")
    reply: dict[str, Any] | None = value.get("reply")
    langs = value.get("langs")
    strong: dict[str, str] = subject if isinstance(subject, dict) else {}
    return RecordTruth(
        uri,
        did,
        collection,
        rkey,
        cid,
        when,
        value["text"] if collection == POST else None,
        reason is None,
        reason,
        tuple(langs) if langs is not None else None,
        reply["root"]["uri"] if reply else None,
        reply["parent"]["uri"] if reply else None,
        strong.get("uri"),
        strong.get("cid"),
        subject if isinstance(subject, str) else None,
    )
