import json

import pytest

from nntune.cli import main
from nntune.config import EVIDENCE_QUESTIONS
from nntune.evidence.stats import KINDS, RULE


def run_ok(capsys, *args):
    main(list(args))
    return capsys.readouterr().out


def test_explain_a_train_run(capsys, tmp_path):
    out = tmp_path / "run"
    run_ok(capsys, "train", "--epochs", "3", "--quiet", "--out", str(out))
    evidence = json.loads(run_ok(capsys, "explain", str(out), "--questions", "lr,early_stopping", "--seeds", "2",
                                 "--max-seeds", "2", "--evidence-budget", "3m", "--quiet", "--json"))
    assert list(evidence) == ["lr", "early_stopping", "setup"]
    assert [r["n"] for r in evidence["lr"]["variants"]] == [2, 2, 2]  # ⅓×, 3× and the range test's suggestion
    assert evidence["setup"]["seconds"] <= 180 and len(evidence["setup"]["seeds"]) == 2
    plan = evidence["setup"]["plan"]  # made after the chosen configuration's runs, before the variants'
    assert plan["answered"] == ["lr"] and plan["variants"] == 3 and plan["measured_seconds"] > 0
    assert 1 <= plan["affordable"] <= 3 and plan["probe_seconds"] > 0  # what fits depends on this machine's speed
    assert json.loads((out / "result.json").read_text())["evidence"] == evidence
    page = (out / "report.html").read_text()
    assert page.count("<b>Measured:</b>") == 2 and (out / "figures" / "q5_evidence.png").exists()
    for q in ("lr", "early_stopping"):  # every compared variant carries its verdict and adjusted p-values
        for r in evidence[q]["variants"]:
            assert r["verdict"] in KINDS and 0 <= r["p_adjusted"] <= 1 and 0 <= r["p_equivalent_adjusted"] <= 1
    assert evidence["setup"]["rule"] == RULE and RULE.replace("'", "&#x27;") in page
    assert "not part of this evidence run" in page
    # the table goes to stdout without --json
    text = run_ok(capsys, "explain", str(out), "--questions", "trainable", "--quiet")
    assert "trainable" in text and "No experiment" in text


def test_explain_errors_are_one_line(capsys, tmp_path):
    run_ok(capsys, "train", "--epochs", "1", "--quiet", "--out", str(tmp_path / "run"))
    for args, words in ((["explain", str(tmp_path / "nope")], "result.json: missing"),
                        (["explain", str(tmp_path), "--questions", "depth,colour"], "unknown question 'colour'"),
                        (["explain", str(tmp_path / "run"), "--seeds", "1"], "evidence.seeds"),
                        (["explain", str(tmp_path / "run"), "--evidence-budget", "soon"], "--evidence-budget: expected a duration")):
        with pytest.raises(SystemExit) as exc:
            main(args)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and words in err and "Traceback" not in err


def test_tune_with_evidence_answers_all_ten_questions(capsys, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("model.family: mlp\n")
    out = tmp_path / "tuned"
    result = json.loads(run_ok(capsys, "tune", "--trials", "3", "--trial-epochs", "4", "--epochs", "4",
                               "--finalists", "0", "--space", str(space), "--evidence", "--evidence-budget", "90s",
                               "--max-seeds", "3",
                               "--quiet", "--out", str(out), "--json"))
    evidence = result["evidence"]
    assert list(evidence) == [*EVIDENCE_QUESTIONS, "setup"]
    assert evidence["setup"]["seconds"] <= 90 + 5 and evidence["setup"]["budget"] == 90
    for q in EVIDENCE_QUESTIONS:
        assert evidence[q]["verdict"]
        if q != "early_stopping":
            assert all(r["n"] == 3 for r in evidence[q]["variants"])
    assert evidence["lr"]["variants"] and evidence["activation"]["variants"]
    page = (out / "report.html").read_text()
    assert page.count("<b>Measured:</b>") == 9 and page.count("<b>Parameter summary:</b>") == 1
    assert "No measurable difference" not in page
    assert page.count("Observational: what the search's own trials show") == 10
    assert (out / "figures" / "q6_evidence.png").exists() and (out / "figures" / "q10_evidence.png").exists()
    assert json.loads((out / "result.json").read_text())["evidence"]["setup"] == evidence["setup"]
