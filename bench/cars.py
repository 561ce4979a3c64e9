"""The CARs of a simulated network, on disk, for the no-network ceiling.

Where it sits: `python -m bench` starts the simulator, then writes every repo
the product can land (active accounts: those the hosts serve) straight from
the simulator's memory (`SimAccount.repo.car`, the exact bytes getRepo
streams) into a folder with a `manifest.tsv`: did, file name, record count,
the DID document's signing key (for the verifying variant).
"""

from __future__ import annotations

from pathlib import Path

from bsky_backfill.simulate import SimNetwork


def dump_cars(net: SimNetwork, folder: Path) -> tuple[int, int]:
    """Write the served repos' CARs into `folder`; (repos, bytes) written."""
    folder.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    total = 0
    for acct in net.accounts:
        repo = acct.repo
        if repo is None or acct.status != "active":
            continue
        name = f"{len(lines):06d}.car"
        (folder / name).write_bytes(repo.car)
        total += len(repo.car)
        key = net.truth.accounts[acct.did].signing_key or ""
        lines.append(f"{acct.did}\t{name}\t{repo.record_count}\t{key}")
    (folder / "manifest.tsv").write_text("\n".join(lines) + "\n")
    return len(lines), total
