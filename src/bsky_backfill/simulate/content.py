"""Realistic record bodies, one lexicon at a time.

Where this sits: `generator.py` decides *which* record an account writes and
*when* (rkey, createdAt); `Content` decides *what it says*: post text in several
scripts (Latin, CJK, Arabic, Hebrew, emoji), facets with UTF-8 byte offsets,
replies, image/external/quote embeds with blob links, strongRefs, lists. All
randomness comes from the `random.Random` passed in, so one seed gives one
network. Values are libipld's Python data model: CID links are raw CID bytes.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bsky_backfill.simulate.ids import raw_cid

POST = "app.bsky.feed.post"
LIKE = "app.bsky.feed.like"
REPOST = "app.bsky.feed.repost"
FOLLOW = "app.bsky.graph.follow"
BLOCK = "app.bsky.graph.block"
PROFILE = "app.bsky.actor.profile"
LIST = "app.bsky.graph.list"
LISTITEM = "app.bsky.graph.listitem"
CHAT_DECLARATION = "chat.bsky.actor.declaration"
EXAMPLE_THING = "com.example.thing"

_FACET = "app.bsky.richtext.facet"


def _split(words: str) -> list[str]:
    return words.split()


# Words per language; CJK ones are joined without spaces.
_WORDS: dict[str, list[str]] = {
    "en": _split(
        "the a sky today coffee morning just posted new thread about rust python data "
        "feels like really love this weekend build shipped finally bird cat garden rain "
        "music reading train city night art photo code bug"
    ),
    "pt": _split("hoje bom dia café muito obrigado gente amanhã praia cidade noite foto"),
    "es": _split("hola buenos días gracias mañana noche ciudad playa muy bueno café perro"),
    "de": _split("heute guten Morgen danke schön Straße Kaffee Zug Stadt wirklich Grüße"),
    "ja": _split("今日 は とても 良い 天気 です ね 猫 が かわいい 電車 コーヒー 桜 東京 仕事"),
    "zh": _split("今天 天气 很 好 我们 一起 去 喝 咖啡 城市 夜晚 猫 朋友"),
    "ko": _split("오늘 날씨 가 정말 좋 네요 커피 고양이 서울 친구 밤"),
    "ar": _split("مرحبا صباح الخير اليوم القهوة المدينة شكرا جميل جدا الليل"),
    "he": _split("שלום בוקר טוב היום קפה העיר תודה יפה מאוד לילה"),
}
_CJK = frozenset({"ja", "zh"})
_LANGS = list(_WORDS)
_LANG_CUM = list(itertools.accumulate([60, 8, 6, 5, 10, 3, 2, 3, 3]))
_EMOJI = ["🦋", "☀️", "🎉", "❤️", "😂", "👍🏽", "🐈", "🌧️", "🚀", "👩‍💻", "🇯🇵", "✨"]
_TAGS = ["bluesky", "atproto", "photography", "日本語", "art", "café", "100DaysOfCode"]
_DOMAINS = ["example.com", "example.org", "news.example.net", "blog.example.dev"]
_T = TypeVar("_T")
_NAMES = ["Alex", "Sam", "Kim", "Noor", "Yuki", "Lena", "Omar", "Zoë", "Mateo", "Priya"]


@dataclass(slots=True)
class PostRef:
    """A post other records can point at: its strongRef and its thread root's."""

    uri: str
    cid: str
    root_uri: str
    root_cid: str


@dataclass(slots=True)
class Pools:
    """What records may refer to: known posts and accounts (the network's and outside ones)."""

    posts: list[PostRef] = field(default_factory=list)
    accounts: list[tuple[str, str]] = field(default_factory=list)  # (did, handle)
    max_posts: int = 20_000
    frozen: bool = False
    """Once frozen, new posts are no longer added (see generator.py: why)."""

    def add_post(self, ref: PostRef, rng: random.Random) -> None:
        if self.frozen:
            return
        # Reservoir-style cap: keeps memory flat for huge networks, still varied.
        if len(self.posts) < self.max_posts:
            self.posts.append(ref)
        else:
            self.posts[rng.randrange(self.max_posts)] = ref


def _pick(rng: random.Random, seq: Sequence[_T]) -> _T:
    """`rng.choice`, about twice as fast (this runs several times per record)."""
    return seq[int(rng.random() * len(seq))]


def _strong_ref(uri: str, cid: str) -> dict[str, Any]:
    return {"uri": uri, "cid": cid}


class Content:
    """Record bodies for one account; `created_at` strings are decided by the caller."""

    def __init__(self, rng: random.Random, pools: Pools, did: str) -> None:
        self.rng = rng
        self.pools = pools
        self.did = did
        self.own_posts: list[PostRef] = []
        self.own_lists: list[str] = []

    # -- text -----------------------------------------------------------------

    def _text(self) -> tuple[str, str]:
        rng = self.rng
        lang = _LANGS[bisect.bisect(_LANG_CUM, rng.random() * _LANG_CUM[-1])]
        words = _WORDS[lang]
        sep = "" if lang in _CJK else " "
        text = sep.join(rng.choices(words, k=2 + int(rng.random() * 17)))
        r = rng.random()
        if r < 0.25:
            text += " " + _pick(rng, _EMOJI)
        elif r < 0.3:
            text += "\n\n" + sep.join(rng.choices(words, k=4))
        elif r < 0.32:
            text = ""  # posts may be empty when they carry an embed
        return text, lang

    def _external_uri(self) -> str:
        rng = self.rng
        return f"https://{_pick(rng, _DOMAINS)}/{_pick(rng, _WORDS['en'])}/{rng.randrange(10**6)}"

    def _blob(self, mime: str = "image/jpeg") -> dict[str, Any]:
        rng = self.rng
        return {
            "$type": "blob",
            "ref": raw_cid(rng.randbytes(16)),
            "mimeType": mime,
            "size": rng.randint(20_000, 950_000),
        }

    def _facets(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """Append mentions / links / tags to `text`, with facets at their UTF-8 byte offsets."""
        rng = self.rng
        facets: list[dict[str, Any]] = []
        for _ in range(_pick(rng, (1, 1, 1, 2, 3))):
            kind = rng.random()
            if kind < 0.4 and self.pools.accounts:
                did, handle = _pick(rng, self.pools.accounts)
                label = "@" + handle
                feature: dict[str, Any] = {"$type": f"{_FACET}#mention", "did": did}
            elif kind < 0.75:
                uri = self._external_uri()
                label = uri
                feature = {"$type": f"{_FACET}#link", "uri": uri}
            else:
                tag = _pick(rng, _TAGS)
                label = "#" + tag
                feature = {"$type": f"{_FACET}#tag", "tag": tag}
            prefix = text + " " if text else ""
            start = len(prefix.encode())
            text = prefix + label
            facets.append(
                {
                    "$type": _FACET,
                    "index": {"byteStart": start, "byteEnd": start + len(label.encode())},
                    "features": [feature],
                }
            )
        return text, facets

    # -- records ----------------------------------------------------------------

    def post(self, created_at: str) -> tuple[dict[str, Any], PostRef | None]:
        """A post body and, if it replies, the parent it points at (for the thread root)."""
        rng = self.rng
        text, lang = self._text()
        value: dict[str, Any] = {"$type": POST, "text": text, "createdAt": created_at}
        r = rng.random()
        if r < 0.9:
            value["langs"] = [lang]
        elif r < 0.95:
            value["langs"] = [lang, "en"] if lang != "en" else ["en", "es"]
        if rng.random() < 0.2:
            value["text"], value["facets"] = self._facets(text)
        parent: PostRef | None = None
        r = rng.random()
        if r < 0.1 and self.own_posts:
            parent = _pick(rng, self.own_posts)  # a self-thread
        elif r < 0.25 and self.pools.posts:
            parent = _pick(rng, self.pools.posts)
        if parent is not None:
            value["reply"] = {
                "root": _strong_ref(parent.root_uri, parent.root_cid),
                "parent": _strong_ref(parent.uri, parent.cid),
            }
        r = rng.random()
        if r < 0.12:
            value["embed"] = self._images()
        elif r < 0.17:
            value["embed"] = self._external()
        elif r < 0.21 and self.pools.posts:
            quoted = _pick(rng, self.pools.posts)
            value["embed"] = {
                "$type": "app.bsky.embed.record",
                "record": _strong_ref(quoted.uri, quoted.cid),
            }
        elif r < 0.22 and self.pools.posts:
            quoted = _pick(rng, self.pools.posts)
            value["embed"] = {
                "$type": "app.bsky.embed.recordWithMedia",
                "record": {
                    "$type": "app.bsky.embed.record",
                    "record": _strong_ref(quoted.uri, quoted.cid),
                },
                "media": self._images(),
            }
        return value, parent

    def _images(self) -> dict[str, Any]:
        rng = self.rng
        images = []
        for _ in range(_pick(rng, (1, 1, 1, 2, 3, 4))):
            image: dict[str, Any] = {"alt": _pick(rng, ("", "a photo", "スクリーンショット"))}
            image["image"] = self._blob(_pick(rng, ("image/jpeg", "image/png", "image/webp")))
            if rng.random() < 0.8:
                image["aspectRatio"] = {"width": rng.randint(300, 4000), "height": 2000}
            images.append(image)
        return {"$type": "app.bsky.embed.images", "images": images}

    def _external(self) -> dict[str, Any]:
        rng = self.rng
        external: dict[str, Any] = {
            "uri": self._external_uri(),
            "title": " ".join(_pick(rng, _WORDS["en"]) for _ in range(5)),
            "description": "",
        }
        if rng.random() < 0.6:
            external["thumb"] = self._blob()
        return {"$type": "app.bsky.embed.external", "external": external}

    def _subject_post(self) -> dict[str, Any]:
        pool = self.pools.posts
        if pool and self.rng.random() < 0.9:
            ref = _pick(self.rng, pool)
            return _strong_ref(ref.uri, ref.cid)
        # A post on some other corner of the network, unknown to this simulation.
        return _strong_ref(
            "at://did:plc:outsidenetwork000000000/app.bsky.feed.post/3kabcdefghi22",
            "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm",
        )

    def like(self, created_at: str) -> dict[str, Any]:
        return {"$type": LIKE, "subject": self._subject_post(), "createdAt": created_at}

    def repost(self, created_at: str) -> dict[str, Any]:
        return {"$type": REPOST, "subject": self._subject_post(), "createdAt": created_at}

    def _subject_did(self) -> str:
        accounts = self.pools.accounts
        if accounts and self.rng.random() < 0.95:
            return _pick(self.rng, accounts)[0]
        return "did:plc:outsidenetwork000000000"

    def follow(self, created_at: str) -> dict[str, Any]:
        return {"$type": FOLLOW, "subject": self._subject_did(), "createdAt": created_at}

    def block(self, created_at: str) -> dict[str, Any]:
        return {"$type": BLOCK, "subject": self._subject_did(), "createdAt": created_at}

    def profile(self, created_at: str | None) -> dict[str, Any]:
        rng = self.rng
        value: dict[str, Any] = {
            "$type": PROFILE,
            "displayName": _pick(rng, _NAMES) + " " + _pick(rng, _EMOJI),
            "description": self._text()[0],
        }
        if rng.random() < 0.8:
            value["avatar"] = self._blob()
        if created_at is not None:
            value["createdAt"] = created_at
        return value

    def list(self, created_at: str) -> dict[str, Any]:
        rng = self.rng
        purpose = _pick(rng, ("curatelist", "curatelist", "modlist"))
        return {
            "$type": LIST,
            "purpose": f"app.bsky.graph.defs#{purpose}",
            "name": _pick(rng, ("Friends", "Artists", "日本の友達", "Spam")),
            "description": self._text()[0],
            "createdAt": created_at,
        }

    def listitem(self, created_at: str) -> dict[str, Any]:
        return {
            "$type": LISTITEM,
            "subject": self._subject_did(),
            "list": _pick(self.rng, self.own_lists),
            "createdAt": created_at,
        }

    def chat_declaration(self) -> dict[str, Any]:
        allow = _pick(self.rng, ("all", "following", "none"))
        return {"$type": CHAT_DECLARATION, "allowIncoming": allow}

    def thing(self, created_at: str | None) -> dict[str, Any]:
        """A record of a collection without a known lexicon (third-party apps exist)."""
        value: dict[str, Any] = {"$type": EXAMPLE_THING, "n": self.rng.randrange(1000)}
        if created_at is not None:
            value["createdAt"] = created_at
        return value
