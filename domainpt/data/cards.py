"""The data card `prepare` writes: what went in, what came out, and what was removed and why."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from domainpt.data.builtin import BUILTINS
from domainpt.manifest import atomic_write_text

_WORD = re.compile(r"[a-z]+")


def vocab_overlap(domain_texts, general_texts, top: int = 10000) -> float | None:
    """Share of the domain's `top` most frequent words that are also in the general text's top words
    (the measure of Gururangan et al. 2020, 'Don't Stop Pretraining')."""
    if not domain_texts or not general_texts:
        return None
    def top_words(texts):
        c = Counter(w for t in texts for w in _WORD.findall(t.lower()))
        return {w for w, _ in c.most_common(top)}
    d, g = top_words(domain_texts), top_words(general_texts)
    return round(len(d & g) / len(d), 4) if d else None


def length_histogram(lengths, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(lengths, bins=40, color="#4878a8")
    ax.set_xlabel("tokens per training document")
    ax.set_ylabel("documents")
    ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def source_facts(src) -> dict:
    info = dict(BUILTINS[src.builtin].info) if src.builtin else {}
    where = src.path or (f"builtin:{src.builtin}" if src.builtin else
                         f"hub:{src.hf}" + (f" ({src.hf_config})" if src.hf_config else "")
                         + (f" at {src.revision}" if src.revision else ""))  # what was read, for provenance
    return {"where": where, "licence": src.licence or info.get("licence", "not declared"), **info}


def write_card(out: Path, recipe, stats: dict, removed_samples: list, samples: dict) -> float | None:
    """Write data_card.md and doc_lengths.png; return the domain/general vocabulary overlap (on `samples`:
    up to 2,000 randomly chosen texts per kind)."""
    length_histogram(stats["doc_lengths"], out / "doc_lengths.png")
    overlap = vocab_overlap(samples.get("domain", []), samples.get("general", []))
    lines = [f"# Data card: {recipe.name} ({recipe.domain})", "",
             "Produced by `domainpt prepare`; every number below was measured on this run.", "", "## Sources", "",
             "| kind | name | where | licence | tokens in training | share |", "|---|---|---|---|---|---|"]
    for kind, sources in (("domain", recipe.data.domain), ("general", recipe.data.general)):
        for s in sources:
            f = source_facts(s)
            st = stats["sources"].get(s.name, {"tokens": 0, "share": 0})
            lines.append(f"| {kind} | {s.name} | {f['where']} | {f['licence']} | {st['tokens']:,} | {st['share']:.1%} |")
    for kind, sources in (("domain", recipe.data.domain), ("general", recipe.data.general)):
        for s in sources:
            f = source_facts(s)
            if f.get("description"):
                lines += ["", f"**{s.name}**: {f['description']} Source: {f.get('url', '')}. "
                              f"Known biases: {f.get('biases', 'not documented')}"]
    clean_removed = sum(stats["cleaning_removed"].values())
    lines += ["", "## Processing", "",
              "| step | documents |", "|---|---|",
              f"| read | {stats['documents_in']:,} |",
              f"| bad records skipped | {stats['bad_records']:,} |",
              f"| removed by cleaning filters | {clean_removed:,} ({', '.join(f'{k}: {v}' for k, v in stats['cleaning_removed'].items()) or 'none'}) |",
              f"| exact duplicates removed | {stats['exact_duplicates_removed']:,} ({stats['tokens_removed']['exact_duplicates']:,} tokens) |",
              f"| near duplicates removed (MinHash, threshold {recipe.data.dedup.threshold}) | {stats['near_duplicates_removed']:,} ({stats['tokens_removed']['near_duplicates']:,} tokens) |",
              f"| held out for perplexity | {sum(stats['heldout_documents'].values()):,} |",
              f"| contaminated ({recipe.data.decontam.ngram}-word overlap with task test texts or a {stats['heldout_ngram_tokens']}-token ({recipe.data.decontam.ngram}-word) overlap with held-out text, action: {recipe.data.decontam.action}) | {stats['contaminated_found']:,} ({stats['tokens_removed']['contaminated']:,} tokens dropped) |",
              f"| in training | {stats['documents_out']:,} documents, {stats['tokens_out']:,} tokens, {stats['blocks']:,} blocks of {stats['seq_len']} |",
              "", f"PII replaced by typed placeholders: {stats['pii_replaced'] or 'scrubbing off'}.",
              f"Replay share of general text: requested {stats['replay_share_requested']:.0%}, actual {stats['replay_share_actual']:.1%}.",
              f"Vocabulary overlap (top-10k words of domain vs general text): {overlap if overlap is not None else 'n/a'}.",
              f"Evaluation texts too short to check for contamination: {stats['eval_texts_too_short_to_check']}.",
              f"Near duplicates: MinHash with {stats['near_dedup_lsh']['num_perm']} permutations, LSH {stats['near_dedup_lsh']['bands']} bands "
              f"x {stats['near_dedup_lsh']['rows']} rows, candidate pairs kept only when their signatures agree on >= "
              f"{recipe.data.dedup.threshold:.0%}. Prepared in {stats['shards']} shard(s); the output does not depend on that number.",
              "", "![document lengths](doc_lengths.png)", "", "## Tasks", "",
              f"| task | train | test | train/test overlap removed | near-duplicate overlap removed (word "
              f"{recipe.data.dedup.shingle_words}-gram Jaccard >= {recipe.data.dedup.threshold}) | labels |",
              "|---|---|---|---|---|---|"]
    for name, t in stats["tasks"].items():
        lines.append(f"| {name} | {t['train']} | {t['test']} | {t['train_test_overlap_removed']} | "
                     f"{t['near_duplicate_overlap_removed']} | {len(t['labels'])} |")
    lines += ["", "## Sample of removed documents (for a person to check)", ""]
    for s in removed_samples:
        lines.append(f"- **{s['reason']}**: {s['text'][:200].replace(chr(10), ' ')!s}")
    if stats["bad_record_examples"]:
        lines += ["", "## Bad records", ""] + [f"- {e}" for e in stats["bad_record_examples"]]
    v = stats.get("vocabulary_extension")
    if v:
        lines += ["", "## Vocabulary extension", "",
                  f"{v['added']} domain words added as tokens (mean-of-pieces init); tokens per word on held-out domain text "
                  f"{v['tokens_per_word_before']:.3f} -> {v['tokens_per_word_after']:.3f}. Most frequent: "
                  + ", ".join(f"{w['word']} ({w['count']}x, was {w['pieces']} tokens)" for w in v["words"][:20])]
    lines += reading_comprehension_lines(stats)
    atomic_write_text(out / "data_card.md", "\n".join(lines) + "\n")
    return overlap


def reading_comprehension_lines(stats: dict) -> list[str]:
    """The card's account of data.transform: reading_comprehension — counts per kind and transformed documents."""
    per_kind, summary = stats.get("reading_comprehension"), stats.get("reading_comprehension_summary")
    if not per_kind:
        return []
    lines = ["", "## Reading-comprehension exercises (AdaptLLM)", "",
             f"{summary['documents_transformed']:,} of {summary['domain_documents']:,} domain training documents got "
             f"exercises mined from their own text, {summary['exercise_tokens']:,} tokens in all "
             f"({summary['share_of_training_tokens']:.1%} of the training tokens; held-out text stays raw). "
             "They went through the same decontamination and packing as the text.", "",
             "| kind | exercises |", "|---|---|"] + [f"| {k} | {n:,} |" for k, n in per_kind.items()]
    lines += ["", "Transformed documents, for a person to check (start and end):", ""]
    for text in summary["samples"]:
        lines += ["```", text, "```"]
    return lines


def corpus_card(name: str, recipes: list, runs: dict) -> str:
    """A card for one packaged corpus: documented facts plus what domainpt measured on it."""
    from domainpt.data.builtin import get_builtin, read_builtin

    info = get_builtin(name).info
    n_docs = n_chars = n_words = 0
    fields = Counter()
    for rec in read_builtin(name):
        n_docs += 1
        n_chars += len(rec["text"])
        n_words += len(rec["text"].split())
        for k, v in rec.items():
            if isinstance(v, str) and k not in ("text", "id", "title", "name", "key", "code") and len(v) < 80:
                fields[(k, v)] += 1
    lines = [f"# Data card: {name}", "", info["description"], "",
             "| | |", "|---|---|",
             f"| licence | {info['licence']} |", f"| language | {info['language']} |", f"| domain | {info['domain']} |",
             f"| source | {info['url']} |", f"| ships in | {info['package']} (read in place, not copied) |",
             f"| documents (measured) | {n_docs:,} |", f"| characters (measured) | {n_chars:,} |",
             f"| words (measured) | {n_words:,} |", "",
             f"**Known biases and risks** (from the dataset's documentation and our reading): {info['biases']}", ""]
    label_fields = sorted({k for k, _ in fields})
    for lf in label_fields:
        vals = sorted(((v, c) for (k, v), c in fields.items() if k == lf), key=lambda x: -x[1])
        if 1 < len(vals) <= 40:
            lines += [f"**Field `{lf}`** (measured counts): " + ", ".join(f"{v} {c}" for v, c in vals), ""]
    used = []
    for r in recipes:
        for kind, srcs in (("domain corpus", r.data.domain), ("general text", r.data.general)):
            used += [f"`{r.name}`: {kind}" for s in srcs if s.builtin == name]
        used += [f"`{r.name}`: task `{t.name}`" for t in r.tasks if t.source.builtin == name]
    lines += ["## Used by", ""] + [f"- {u}" for u in used] + [""]
    for rname, stats in runs.items():
        lines += [f"## Measured in the `{rname}` prepare stage", "",
                  f"Documents read (all sources of the run): {stats['documents_in']:,}; exact duplicates removed: "
                  f"{stats['exact_duplicates_removed']}; near duplicates removed: {stats['near_duplicates_removed']}; "
                  f"PII replaced: {stats['pii_replaced']}; documents overlapping evaluation texts: {stats['contaminated_found']}.",
                  ""]
        for tname, t in stats.get("tasks", {}).items():
            lines.append(f"Task `{tname}` split: {t['train']} train / {t['test']} test examples, "
                         f"{t['train_test_overlap_removed']} train examples dropped for duplicating a test text"
                         + (f", {t['near_duplicate_overlap_removed']} for nearly duplicating one."
                            if "near_duplicate_overlap_removed" in t else "."))
        lines.append("")
    lines += ["Generated by `domainpt cards`; the measured rows are recomputed each time."]
    return "\n".join(lines) + "\n"


def write_cards(recipes: list, folder: Path) -> list[Path]:
    import json

    from domainpt.manifest import stage_dir

    names = sorted({s.builtin for r in recipes for s in r.data.domain + r.data.general + [t.source for t in r.tasks] if s.builtin})
    out = []
    for name in names:
        runs = {}
        for r in recipes:
            p = stage_dir(r, "prepare") / "stats.json"
            used = any(s.builtin == name for s in r.data.domain + r.data.general + [t.source for t in r.tasks])
            if used and p.is_file():
                runs[r.name] = json.loads(p.read_text())
        path = Path(folder) / f"{name}.md"
        atomic_write_text(path, corpus_card(name, recipes, runs))
        out.append(path)
    return out
