"""prepare as map (shards) + reduce (merge): the same output however it is split, with planted
duplicates across shards removed, planted test-set copies dropped, and source weights honoured."""
import json
import random

import pytest
import yaml

from conftest import cli
from domainpt.cli import main
from domainpt.data.pack import PackedBlocks

WORDS = ("court contract clause party licence agreement tenant notice damages statute appeal liability "
         "warranty breach remedy consent section schedule term payment").split()


def _text(tag: str, seed: int, n: int = 80) -> str:
    rng = random.Random(seed)
    return f"Marker {tag}. " + " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def sharded_recipe(tiny_llama, tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    task_rows = [{"text": _text(f"q{i}", 10_000 + i, 30), "label": ["yes", "no"][i % 2]} for i in range(40)]
    a = [_text(f"a{i}", i) for i in range(200)]
    a[150] = a[5].upper().replace(".", " !")          # exact duplicate (case, punctuation), another shard than a[5]
    words = a[20].split()
    words[40] = "zzz"
    a[170] = " ".join(words)                            # near duplicate of a[20] (Jaccard ~0.88)
    for i, row in enumerate(task_rows):                 # every task text copied into one domain document
        a[60 + i] = a[60 + i] + " " + row["text"]
    b = [_text(f"b{i}", 1000 + i) for i in range(90)]
    g = [_text(f"g{i}", 2000 + i) for i in range(80)]
    recipe = {
        "name": "shards", "domain": "legal", "out_dir": str(d / "unused"),
        "model": {"base": tiny_llama},
        "data": {"domain": [{"path": _jsonl(d / "a.jsonl", [{"text": t} for t in a]), "name": "a", "weight": 1.0},
                            {"path": _jsonl(d / "b.jsonl", [{"text": t} for t in b]), "name": "b", "weight": 1.0}],
                 "general": [{"path": _jsonl(d / "g.jsonl", [{"text": t} for t in g]), "name": "g"}],
                 "replay_share": 0.2, "heldout_docs": 4, "seq_len": 64},
        "tasks": [{"name": "t", "source": {"path": _jsonl(d / "t.jsonl", task_rows)}, "test_size": 10, "train_size": 20,
                   "prompt": "{text}\nAnswer:"}],
    }
    path = d / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path, d, {"a": a, "b": b, "tasks": task_rows}


def _prepare(recipe, out, *extra):
    try:
        main(["prepare", str(recipe), f"out_dir={out}", *extra])
    except SystemExit as e:
        raise AssertionError(f"prepare exited with {e.code}") from None
    return out / "prepare"


def _outputs(prep):
    stats = json.loads((prep / "stats.json").read_text())
    for k in ("base_model", "shards"):
        stats.pop(k)
    files = {p: (prep / p).read_bytes() for p in ("train/tokens.bin", "train/doc_ends.npy", "heldout_domain.jsonl",
                                                   "heldout_general.jsonl", "tasks/t/test.jsonl")}
    return stats, files


def test_sharded_prepare_equals_one_process(sharded_recipe, tokenizer, tmp_path):
    recipe, _, corpus = sharded_recipe
    one = _prepare(recipe, tmp_path / "one")
    for i in range(3):  # three independent map tasks, then the merge
        main(["prepare", str(recipe), f"out_dir={tmp_path / 'three'}", "--shard", f"{i}/3"])
    three = _prepare(recipe, tmp_path / "three", "--merge")
    pool = _prepare(recipe, tmp_path / "pool", "data.num_proc=2")
    assert _outputs(three) == _outputs(one)
    assert _outputs(pool) == _outputs(one)
    assert not (three / "shards").exists() and (three / "manifest.json").is_file()

    stats = json.loads((one / "stats.json").read_text())
    assert stats["exact_duplicates_removed"] == 1 and stats["near_duplicates_removed"] == 1
    blocks = PackedBlocks(one / "train")
    train = [tokenizer.decode(blocks.document(j)) for j in range(len(blocks.doc_ends))]
    held = [json.loads(l)["text"] for l in (one / "heldout_domain.jsonl").read_text().splitlines()]
    for tag in ("a5", "a20"):  # one copy of each planted pair survives (in training or held out)
        assert sum(f"Marker {tag}." in t or f"MARKER {tag.upper()} !" in t for t in train + held) == 1, tag
    tests = [json.loads(l)["text"] for l in (one / "tasks" / "t" / "test.jsonl").read_text().splitlines()]
    assert stats["contaminated_found"] >= len(tests)
    assert not [t for t in train if any(x in t for x in tests)]  # no test text left in training
    # equal weights: the scarcer source b sets both domain quotas; replay is 20% of all tokens
    shares = {s: v["share"] for s, v in stats["sources"].items()}
    assert abs(shares["a"] - shares["b"]) < 0.03 and abs(shares["g"] - 0.2) < 0.005, shares


def test_merge_names_missing_shards(sharded_recipe, tmp_path):
    recipe, _, _ = sharded_recipe
    out = tmp_path / "partial"
    main(["prepare", str(recipe), f"out_dir={out}", "--shard", "0/3"])
    r = cli("prepare", recipe, f"out_dir={out}", "--merge")
    assert r.returncode == 2 and "shards 1/3, 2/3 are not finished" in r.stderr, r.stderr[-500:]
    assert not (out / "prepare" / "manifest.json").exists()
    r = cli("prepare", recipe, f"out_dir={out}", "--shard", "3/3")
    assert r.returncode == 2 and "--shard '3/3': need 0 <= I < N" in r.stderr
