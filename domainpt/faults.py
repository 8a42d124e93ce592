"""Fault injection for the crash-safety tests; does nothing unless DOMAINPT_FAULT is set.

    DOMAINPT_FAULT="checkpoint.before_rename@8,nan_loss@3-5" domainpt pretrain recipes/demo/tiny.yaml

`name@i` (or `name@i-j`) fires when code reaches the point `name` with index i: a step number for
kill points, the position of a micro-batch in the data stream for nan_loss (a bad batch).
Kill points end the process with SIGKILL, as a pre-empted node or the OOM killer would.
"""
from __future__ import annotations

import os
import signal


def active(name: str, index: int) -> bool:
    spec = os.environ.get("DOMAINPT_FAULT", "")
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, _, at = part.partition("@")
        lo, _, hi = at.partition("-")
        if point == name and lo.isdigit() and int(lo) <= index <= int(hi or lo):
            return True
    return False


def kill_point(name: str, index: int) -> None:
    if active(name, index):
        os.kill(os.getpid(), signal.SIGKILL)
