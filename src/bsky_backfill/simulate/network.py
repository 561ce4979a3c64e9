"""The whole simulated AT Protocol network, started and stopped as one object.

Where this sits: the entry point of `bsky_backfill.simulate`, used by
`bsky-backfill demo`, end-to-end tests and benchmarks. `SimNetwork` binds
every socket on 127.0.0.1 first (did:web DIDs embed their port), builds the
repos (`generator.generate`), then serves the PLC directory, one site per
did:web account and N PDS hosts with aiohttp. `run_network_in_thread` runs
one on its own event loop in a daemon thread, for callers that are not async
(a CLI started as a subprocess, the demo command).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from aiohttp import web

from bsky_backfill.simulate.accounts import SimAccount
from bsky_backfill.simulate.directory import DidWebSite, PlcDirectory
from bsky_backfill.simulate.dns import SimDns
from bsky_backfill.simulate.generator import SimContent, generate
from bsky_backfill.simulate.mutate import Mutation, mutate_account
from bsky_backfill.simulate.pds import PdsHost
from bsky_backfill.simulate.policy import HostPolicy
from bsky_backfill.simulate.relay import SimRelay
from bsky_backfill.simulate.scenario import Faults, RateLimit, Scenario
from bsky_backfill.simulate.stats import RequestStats
from bsky_backfill.simulate.truth import GroundTruth

SimHost = PdsHost


class SimNetwork:
    """A PLC directory, did:web sites and PDS hosts on loopback, serving real repos.

    Use as `async with SimNetwork(scenario) as net:`; then `net.plc_url`,
    `net.hosts[i].url`, `net.dids` (what a user would list), `net.truth`
    (what a correct backfill must produce) and `net.stats` (what it asked for);
    `net.relay_url` when the scenario asks for a relay.
    """

    def __init__(self, scenario: Scenario | None = None) -> None:
        self.scenario = scenario or Scenario()
        self.stats = RequestStats()
        self.plc_url = ""
        self.hosts: list[PdsHost] = []
        self.web_sites: list[DidWebSite] = []
        self.plc: PlcDirectory | None = None
        self.relay: SimRelay | None = None
        self.relay_url = ""
        self.dns: SimDns | None = None
        self.dns_server = ""
        self._content: SimContent | None = None
        self._runners: list[web.AppRunner] = []
        self._policies: list[HostPolicy] = []
        self._sockets: list[socket.socket] = []

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        sc = self.scenario
        plc_sock = self._bind()
        host_socks = [self._bind() for _ in range(sc.hosts)]
        web_socks = [self._bind() for _ in range(min(sc.did_web, sc.accounts))]
        self.plc_url = f"http://127.0.0.1:{plc_sock.getsockname()[1]}"
        host_urls = [f"http://127.0.0.1:{s.getsockname()[1]}" for s in host_socks]
        web_dids = [f"did:web:localhost%3A{s.getsockname()[1]}" for s in web_socks]
        # Building repos is CPU work; a worker thread keeps this loop responsive.
        self._content = await asyncio.to_thread(generate, sc, web_dids, host_urls)
        accounts = self._content.accounts

        plc_policy = self._policy("plc", None, sc.plc_faults)
        plc_policy.drop_next = sc.plc_down_requests
        self.plc = PlcDirectory(
            accounts,
            host_urls,
            plc_policy,
            sc.plc_tombstone_status,
            export_seq=sc.plc_export_seq,
            legacy_create=sc.plc_legacy_create,
            nullified=sc.plc_nullified,
        )
        await self._serve(self.plc.app(), plc_sock)
        for i, (url, sock) in enumerate(zip(host_urls, host_socks, strict=True)):
            policy = self._policy(f"pds{i}", sc.rate_limit, sc.faults)
            host = PdsHost(
                i,
                url,
                accounts,
                policy,
                sc.not_found_error,
                list_moved_out=sc.old_host_lists_migrated,
            )
            self.hosts.append(host)
            await self._serve(host.app(), sock)
        if sc.relay:
            relay_sock = self._bind()
            self.relay_url = f"http://127.0.0.1:{relay_sock.getsockname()[1]}"
            self.relay = SimRelay(
                self.hosts,
                self._policy("relay", None, None),
                miss_fraction=sc.relay_miss_fraction,
                seed=sc.seed,
            )
            self.relay.url = self.relay_url
            await self._serve(self.relay.app(), relay_sock)
        dns_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dns_sock.bind(("127.0.0.1", 0))
        self._sockets.append(dns_sock)
        self.dns = SimDns(accounts, self.stats)
        await self.dns.start(dns_sock)
        self.dns_server = f"127.0.0.1:{dns_sock.getsockname()[1]}"
        web_accounts = [a for a in accounts if a.method == "web"]
        for i, (acct, sock) in enumerate(zip(web_accounts, web_socks, strict=True)):
            site = DidWebSite(acct, host_urls[acct.host_index], self._policy(f"web{i}", None, None))
            self.web_sites.append(site)
            await self._serve(site.app(), sock)

    def _bind(self) -> socket.socket:
        """A listening address on loopback with an ephemeral port, owned until close()."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._sockets.append(sock)
        return sock

    def _policy(self, name: str, rate_limit: RateLimit | None, faults: Faults | None) -> HostPolicy:
        policy = HostPolicy(name, self.stats, rate_limit, faults)
        self._policies.append(policy)
        return policy

    async def _serve(self, app: web.Application, sock: socket.socket) -> None:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runners.append(runner)
        await web.SockSite(runner, sock).start()

    async def close(self) -> None:
        for policy in self._policies:
            policy.closing.set()  # release injected hangs so shutdown is quick
        if self.dns is not None:
            self.dns.close()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        for sock in self._sockets:  # those never served (start failed) are still open
            sock.close()
        self._sockets.clear()

    async def __aenter__(self) -> SimNetwork:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- what tests look at -------------------------------------------------------------

    @property
    def content(self) -> SimContent:
        if self._content is None:
            raise RuntimeError("the network is not started")
        return self._content

    @property
    def truth(self) -> GroundTruth:
        return self.content.truth

    @property
    def dids(self) -> list[str]:
        """Every DID a user would list: all accounts plus tombstoned and unknown DIDs."""
        return list(self.truth.input_dids)

    @property
    def host_urls(self) -> list[str]:
        return [h.url for h in self.hosts]

    @property
    def accounts(self) -> list[SimAccount]:
        return self.content.accounts

    def mutate(
        self, did: str, *, add_posts: int = 0, delete_uris: tuple[str, ...] = ()
    ) -> Mutation:
        """Give `did` a new commit with new posts and/or deleted records (refresh tests)."""
        return mutate_account(
            self.account(did), self.truth, add_posts=add_posts, delete_uris=delete_uris
        )

    def account(self, did: str) -> SimAccount:
        """The simulated account behind `did` (KeyError for unknown DIDs)."""
        return self.content.account(did)

    async def resolve_txt(self, name: str) -> list[str]:
        """The network's DNS as a resolver hook (`Backfill(handle_txt=net.resolve_txt)`)."""
        if self.dns is None:
            raise RuntimeError("the network is not started")
        return await self.dns.resolve_txt(name)

    def handles(self, dids: list[str] | None = None) -> list[str]:
        """The handles of `dids` (default: every account with one), in order."""
        wanted = self.dids if dids is None else dids
        by_did = {a.did: a.handle for a in self.accounts if a.handle}
        return [by_did[d] for d in wanted if d in by_did]

    def write_dids(self, path: Path, dids: list[str] | None = None) -> Path:
        """Write a DIDs file (one per line, with a comment) for `bsky-backfill run --dids`."""
        lines = ["# simulated network input DIDs", *(dids if dids is not None else self.dids)]
        path.write_text("\n".join(lines) + "\n")
        return path


@contextmanager
def run_network_in_thread(
    scenario: Scenario | None = None, *, start_timeout: float = 600.0
) -> Iterator[SimNetwork]:
    """Start a `SimNetwork` on its own event loop in a daemon thread; stop it on exit."""
    loop = asyncio.new_event_loop()
    net = SimNetwork(scenario)
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(net.__aenter__())
        except BaseException as e:  # handed to the caller's thread below
            failure.append(e)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(net.close())
            loop.close()

    thread = threading.Thread(target=run, name="bsky-backfill-simnet", daemon=True)
    thread.start()
    if not ready.wait(start_timeout):
        raise TimeoutError("the simulated network did not start in time")
    if failure:
        raise failure[0]
    try:
        yield net
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
