"""The documentation: a README front page that stays short and links only to pages that exist, a docs site that
builds with `mkdocs build --strict`, and a key reference generated from the config's own help that names every
key a recipe can set."""
import dataclasses
import glob
import importlib.util
import os
import re
import subprocess
import sys
import typing

import pytest
import yaml

from conftest import ROOT

DOCS = ROOT / "docs"


def test_the_readme_is_a_front_page_whose_links_all_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250 and "<<" not in readme  # short, and every measured figure filled in
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    assert links and all((ROOT / link).is_file() for link in links if not link.startswith("http")), links
    for page in ("demo", "stages", "scale", "verdict", "publish", "keys", "recipe-checks", "troubleshooting"):
        assert f"docs/{page}.md" in readme, page


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
                    reason="the docs extra is not installed (pip install 'domainpt[docs]'; make setup installs it)")
def test_the_docs_site_builds_strict(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d",
                        str(tmp_path / "site")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "site" / "keys" / "index.html").is_file() and (tmp_path / "site" / "publish" / "index.html").is_file()
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    assert {next(iter(item.values())) for item in nav} == {p.name for p in DOCS.glob("*.md")}  # every page in the nav


def _all_keys(cls, prefix=""):
    """Every dotted key of the recipe dataclasses, walked here rather than by field_docs (lists of sections: .N.)."""
    from domainpt import config as C

    items = {"data.domain": C.SourceConfig, "data.general": C.SourceConfig, "tasks": C.TaskConfig}
    for f in dataclasses.fields(cls):
        key, hint = prefix + f.name, typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _all_keys(hint, key + ".")
            continue
        yield key
        if key in items and key != "data.general":
            yield from _all_keys(items[key], key + ".N.")
        for inner in [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]:  # an optional section
            yield from _all_keys(inner, key + ".")


def _recipe_keys(node, prefix=""):
    """The dotted keys a shipped recipe sets, list positions as N."""
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and k not in ("filter", "config_overrides", "verbalizers"):
                yield from _recipe_keys(v, key + ".")
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    yield from _recipe_keys(item, f"{key}.N.")
            else:
                yield key


def test_the_key_reference_is_generated_from_the_config_and_names_every_key():
    from domainpt.config import Recipe, keys_markdown

    page = (DOCS / "keys.md").read_text()
    assert page.rstrip().endswith(keys_markdown()), "docs/keys.md is stale: regenerate it with `domainpt keys --markdown`"
    documented = set(re.findall(r"^\| `([^`]+)` \|", page, flags=re.M))
    missing = [k for k in _all_keys(Recipe) if k not in documented]
    assert not missing, missing
    for path in glob.glob(str(ROOT / "recipes" / "**" / "*.yaml"), recursive=True):
        if "/accelerate/" in path:
            continue
        used = {k.replace("data.general.N.", "data.domain.N.") for k in _recipe_keys(yaml.safe_load(open(path)))}
        assert used <= documented, (path, sorted(used - documented))
