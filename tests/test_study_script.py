"""scripts/study.py: the override parser and the markdown report (the tables of docs/results-*.md)."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study", ROOT / "scripts" / "study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_overrides_parse_json_values_and_keep_strings(study):
    assert study._overrides(["epochs=30", "arch_lr=3e-2", "normalize=true", "image=camera"]) == \
        {"epochs": 30, "arch_lr": 0.03, "normalize": True, "image": "camera"}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        study._overrides(["epochs"])


def test_evaluation_keeps_task_options_and_drops_search_changes():
    from grafs.tasks.base import evaluation_overrides
    got = evaluation_overrides({"epochs": 30, "search_lr": 1e-2, "shrink_start_epoch": 4,
                                "student_norm": True, "eval_lr": 1e-3, "teacher": "abs(x)"})
    assert got == {"student_norm": True, "eval_lr": 1e-3, "teacher": "abs(x)"}


def _table(names_scores):
    rows = [{"name": n, "mean": sum(s) / len(s), "sem": 0.01, "scores": s,
             "formula": f if n.startswith("found") else n} for n, s, f in names_scores]
    return {"metric": "mse", "higher_is_better": False, "rows": rows,
            "search_seconds": 30.0, "eval_seconds": 10.0}


def test_report_tables_verdicts_settings_and_plot(study, tmp_path):
    rows = [
        {"kind": "search", "task": "teacher", "teacher": "tanh(x)", "seed": 0, "variant": "grafs",
         "overrides": {"epochs": 30}, "formula": "erf(x)", "seconds": 12.0,
         "first_drop_entropy": 0.95, "shape_error": 0.03},
        {"kind": "eval", "task": "teacher", "teacher": "tanh(x)", "variant": "grafs",
         "table": _table([("found s0", [0.10, 0.10], "erf(x)"), ("found s1", [0.50, 0.50], "x"),
                          ("GELU", [0.20, 0.20], None), ("ReLU", [0.30, 0.30], None)])},
    ]
    path = tmp_path / "t.json"
    path.write_text(json.dumps(rows))
    md = study.report([str(path)], plots=str(tmp_path / "img"))
    lines = md.splitlines()
    # the variant's settings include the recorded overrides
    assert "{'arch_lr': 0.03, 'normalize': True, 'restarts': 1, 'epochs': 30}" in lines[0]
    header = next(l for l in lines if l.startswith("| teacher |"))
    sep = lines[lines.index(header) + 1]
    assert header.count("|") == sep.count("|")          # a table markdown renders
    assert "1 of 1 searches within shape error 0.1" in md
    assert "search/evaluation wall time 3.00" in md
    verdict = {l.split("|")[1].strip(): l.split("|")[3].strip() for l in lines
               if l.startswith("| found")}
    assert verdict == {"found s0": "better by > 1 SEM", "found s1": "worse"}
    assert (tmp_path / "img" / "teacher-grafs-epochs30-tanh_x_.png").stat().st_size > 1000


def test_report_marks_a_formula_whose_every_run_failed(study, tmp_path):
    table = _table([("found s0", [0.9, 0.9], "erf(x)"), ("GELU", [0.8, 0.8], None)])
    table["higher_is_better"] = True
    table["rows"].insert(1, {"name": "found s1", "mean": float("nan"), "sem": float("nan"),
                             "scores": [], "formula": "sinh(sinh(x))"})
    table["failures"] = [{"name": "found s1", "formula": "sinh(sinh(x))", "seed": s,
                          "error": "GrafsError: non-finite training loss nan"} for s in (0, 1)]
    rows = [{"kind": "search", "task": "digits", "seed": 0, "variant": "default",
             "formula": "erf(x)", "seconds": 3.0, "first_drop_entropy": None},
            {"kind": "eval", "task": "digits", "variant": "default", "table": table}]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows))
    md = study.report([str(path)])
    line = next(l for l in md.splitlines() if l.startswith("| found s1"))
    assert "failed in 2 of 2 runs" in line and "worse" in line and "non-finite" in line
    assert "nan" not in line.split("|")[2]
    assert next(l for l in md.splitlines() if l.startswith("| found s0")).split("|")[3].strip() \
        == "better by > 1 SEM"


def test_report_judges_against_scaled_baselines_with_welch_t(study, tmp_path):
    """With scaled baselines evaluated, found formulas get a second verdict against the best of
    them, and every judged row its Welch t against the best plain baseline."""
    table = _table([("found s0", [0.10, 0.12], "1.53*gelu(x)"), ("1.530·GELU", [0.11, 0.11], None),
                    ("GELU", [0.20, 0.20], None), ("ReLU", [0.30, 0.30], None)])
    rows = [{"kind": "search", "task": "teacher", "teacher": "tanh(x)", "seed": 0,
             "variant": "grafs", "formula": "1.53*gelu(x)", "seconds": 1.0,
             "first_drop_entropy": 0.9, "shape_error": 0.05},
            {"kind": "eval", "task": "teacher", "teacher": "tanh(x)", "variant": "grafs",
             "table": table}]
    path = tmp_path / "s.json"
    path.write_text(json.dumps(rows))
    lines = study.report([str(path)]).splitlines()
    header = next(l for l in lines if l.startswith("| activation"))
    assert header.count("|") == lines[lines.index(header) + 1].count("|") == 7
    assert "best scaled baseline 1.530·GELU 0.1100" in study.report([str(path)])
    cells = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]] for l in lines
             if l.startswith("| found") or l.startswith("| 1.530")}
    assert cells["found s0"][1:4] == ["better by > 1 SEM", "within 1 SEM", "+6.4"]   # 0.09 / √(2·0.01²)
    assert cells["1.530·GELU"][1] == "better by > 1 SEM" and cells["1.530·GELU"][3] == "+6.4"


def test_random_formulas_take_the_argmax_of_seeded_normal_draws():
    """scripts/random_formulas.py: one op per hole, the argmax of N(0, 1) draws made hole by
    hole from the seed (so uniform over the hole's candidates), discretised like a search."""
    import torch
    import grafs
    spec = importlib.util.spec_from_file_location("random_formulas",
                                                  ROOT / "scripts" / "random_formulas.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for seed in (0, 1001):
        cell = mod.random_alpha_cell("teacher", seed, num_train=64, num_test=16)
        g = torch.Generator().manual_seed(seed)
        expected = [h.ops[int(torch.randn(len(h.ops), generator=g).argmax())]
                    for h in cell.space.holes]
        assert cell.chosen_ops() == expected
        formula = mod.random_formula("teacher", seed, num_train=64, num_test=16)
        assert formula == str(cell.discretize())
        grafs.parse(formula)                       # a formula grafs accepts back


def test_a_resumed_study_evaluates_searches_its_table_lacks(study, tmp_path, monkeypatch):
    """More seeds on an evaluated study: the evaluation is redone with the new found formula
    (its finished runs come from the cache); a complete table is kept as it is."""
    import grafs.protocol.evaluate

    class FakeTable:
        def __init__(self, named):
            self.named = named

        def to_dict(self):
            return {"metric": "mse", "higher_is_better": False, "search_seconds": 1.0,
                    "eval_seconds": 1.0,
                    "rows": [{"name": n, "formula": f, "scores": [0.1], "mean": 0.1, "sem": 0.0}
                             for n, f in {**self.named, "ReLU": "ReLU"}.items()]}

        def markdown(self):
            return ""

    calls = []

    def fake_evaluate(task, found, **kw):
        assert task.info["student_norm"] is True       # the task as searched (--set)
        calls.append(dict(found))
        return FakeTable(found)

    monkeypatch.setattr(grafs.protocol.evaluate, "evaluate", fake_evaluate)
    search = {"kind": "search", "task": "teacher", "teacher": "tanh(x)", "variant": "default",
              "overrides": {}, "seconds": 1.0, "first_drop_entropy": 0.9, "shape_error": 0.0}
    out = tmp_path / "s.json"
    out.write_text(json.dumps([{**search, "seed": 0, "formula": "tanh(x)"},
                               {**search, "seed": 1, "formula": "erf(x)"},
                               {"kind": "eval", "task": "teacher", "teacher": "tanh(x)",
                                "variant": "default",
                                "table": FakeTable({"found s0": "tanh(x)"}).to_dict()}]))
    argv = ["--task", "teacher", "--variant", "default", "--teachers", "tanh(x)", "--seeds", "0",
            "1", "--eval-seeds", "1", "--jobs", "1", "--set", "student_norm=true",
            "num_train=64", "num_test=16", "--out", str(out)]
    study.main(argv)
    assert calls == [{"found s0": "tanh(x)", "found s1": "erf(x)"}]
    evals = [r for r in json.loads(out.read_text()) if r["kind"] == "eval"]
    assert len(evals) == 1 and {x["name"] for x in evals[0]["table"]["rows"]} >= {"found s1"}
    study.main(argv)                                   # complete now: nothing is redone
    assert len(calls) == 1
