"""Local resources: domainpt's cache folder, and free-disk checks before large writes (checkpoints, token shards)
that fail with advice, not a half-written file."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from domainpt.errors import DomainptError

GB = 1024 ** 3


def cache_root() -> Path:
    """Where converted models and parsed builtin corpora are kept between runs ($DOMAINPT_CACHE to move it)."""
    return Path(os.environ.get("DOMAINPT_CACHE", Path.home() / ".cache" / "domainpt"))


def free_bytes(path: Path) -> int:
    path = Path(path)
    while not path.exists():  # the folder may not exist yet: ask about the nearest parent
        path = path.parent
    return shutil.disk_usage(path).free


def ensure_free_space(path: Path, needed: int, what: str, advice: str) -> None:
    free = free_bytes(path)
    if free < needed:
        raise DomainptError(f"not enough free disk for {what} in {path}: about {needed / GB:.2f} GB needed, "
                            f"{free / GB:.2f} GB free; {advice}")


def checkpoint_bytes(model, optimizer_states_per_param: int = 2) -> int:
    """Size of save_state: weights in their dtype plus AdamW's two fp32 moments for trainable weights, +10%."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    moments = sum(p.numel() * 4 * optimizer_states_per_param for p in model.parameters() if p.requires_grad)
    return int((weights + moments) * 1.1) + 16 * 1024 ** 2
