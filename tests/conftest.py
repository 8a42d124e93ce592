import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "demo" / "tiny.yaml"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cli(*args, cwd=ROOT, timeout=900, env=None):
    """Run `python -m domainpt ...` the way a user does; return the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "domainpt", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One full `domainpt run` of the tiny recipe, shared by the tests that read its outputs."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    r = cli("run", TINY, f"out_dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


@pytest.fixture(scope="session")
def tokenizer():
    from domainpt.models import load_tokenizer, resolve

    return load_tokenizer(resolve("smollm2-135m"))
