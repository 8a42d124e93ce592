"""The shipped accelerate config files parse with accelerate's own loader and say what their names say."""
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "recipes" / "accelerate").glob("*.yaml"))
EXPECT = {"single_gpu": ("NO", 1), "ddp_8gpu": ("MULTI_GPU", 8), "fsdp_8gpu": ("FSDP", 8),
          "deepspeed_zero2": ("DEEPSPEED", 8), "deepspeed_zero3": ("DEEPSPEED", 8), "multi_node_2x8": ("MULTI_GPU", 16)}


def test_every_config_is_expected():
    assert {p.stem for p in CONFIGS} == set(EXPECT)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_parses(path):
    c = load_config_from_file(str(path))
    kind, procs = EXPECT[path.stem]
    assert str(c.distributed_type).split(".")[-1] == kind and c.num_processes == procs
    if kind == "FSDP":
        assert c.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    if path.stem.startswith("deepspeed"):
        assert c.deepspeed_config["zero_stage"] == int(path.stem[-1])
