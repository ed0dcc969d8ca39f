"""The documentation site builds with ``mkdocs build --strict`` (a broken link or API reference
fails), and its build helper in scripts/ does what it says. Budget: the build, ~5 s."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS_EXTRA = "needs the docs extra: pip install 'grafs[docs]'"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_strict_build(tmp_path):
    for mod in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(mod, reason=DOCS_EXTRA)
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                           "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for page in ("index.html", "guide/tracking/index.html", "results/index.html",
                 "api/search/index.html", "api/callbacks/index.html", "api/runtime/index.html"):
        assert (site / page).is_file(), page
    # the API pages come from the docstrings, with Sphinx roles turned into code
    api = (site / "api" / "callbacks" / "index.html").read_text()
    assert "grafs.callbacks.EpochInfo" in api and "normalised entropy of the Dirichlet mean" in api
    assert ":class:" not in api and ":func:" not in api
    # every cross-reference resolved: an unknown identifier stays in the page as "][name]"
    unresolved = [f"{p.relative_to(site)}: {m}" for p in site.rglob("*.html")
                  for m in re.findall(r"\]\[[\w.]+\]", p.read_text(encoding="utf-8"))]
    assert unresolved == []
    arch = (site / "architecture" / "index.html").read_text()
    assert "the single source of truth" in arch and 'href="../search-cost/"' in arch


def test_sphinx_roles_become_code():
    pytest.importorskip("griffe", reason=DOCS_EXTRA)
    roles = _load("griffe_sphinx_roles")
    assert roles.strip_roles("see :class:`RelaxedCell` and :func:`~grafs.searching.search`, "
                             ":py:data:`grafs.ops.OPS`") == \
        "see `RelaxedCell` and `search`, `grafs.ops.OPS`"


def test_every_result_file_is_named_by_a_page():
    """docs/ holds pages and folders only: result JSON under docs/data/<task>/, pictures under
    docs/img/, and each of them is named by some page (a link or its path)."""
    docs = ROOT / "docs"
    assert sorted(p.name for p in docs.iterdir() if p.is_file() and p.suffix != ".md") == []
    pages = "\n".join(p.read_text(encoding="utf-8") for p in docs.rglob("*.md"))
    files = sorted(docs.glob("data/*/*.json")) + sorted(docs.glob("img/*"))
    assert files
    unnamed = [str(p.relative_to(docs)) for p in files if str(p.relative_to(docs)) not in pages]
    assert unnamed == [], f"name these in a docs page (a link, or the path docs/...): {unnamed}"


def test_dotted_paths_the_docs_write_work_after_import_grafs():
    """The README writes `grafs.tasks.get_task("teacher").search_config` after `import grafs`;
    the subpackages were attributes only once something had imported them (a fresh process:
    AttributeError)."""
    import subprocess
    import sys
    code = ("import grafs\n"
            "assert grafs.tasks.get_task('teacher').search_config is not None\n"
            "import grafs.protocol.task_search\n"
            "assert callable(grafs.protocol.task_search.search_task)\n"
            "assert 'tasks' in dir(grafs) and 'searching' in dir(grafs)\n"
            "try:\n    grafs.nonexistent\nexcept AttributeError:\n    pass\n"
            "else:\n    raise SystemExit('no AttributeError')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
