"""Where lbfood may write a user's output (engine/outputs.py): never over a file it did not write (21.10)."""

import json

import pytest
from cli_checks import one_error_line
from typer.testing import CliRunner

from lbfood.cli import app
from lbfood.engine import outputs
from lbfood.engine.errors import ConfigError, StorageError
from lbfood.output import writers

runner = CliRunner()
CPU = ("--device", "cpu", "-q")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_an_output_file_replaces_only_lbfoods_own(tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text('{"my": "notes"}')
    with pytest.raises(ConfigError, match="already exists and lbfood did not write it"):
        outputs.check_file(mine, "--output", ours=lambda p: writers.is_report(p, "json"))
    ok = tmp_path / "r.json"
    ok.write_text(json.dumps({"id_data": "x", "ood": [], "methods": [], "convention": "paper", "runs": []}))
    assert outputs.check_file(ok, "--output", ours=lambda p: writers.is_report(p, "json")) == ok
    assert outputs.check_file(tmp_path / "new.json", "--output") == tmp_path / "new.json"
    link = tmp_path / "link.json"
    link.symlink_to(ok)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        outputs.check_file(link, "--output", ours=lambda p: True)
    with pytest.raises(StorageError, match="it is a folder"):
        outputs.check_file(tmp_path, "--output")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    with pytest.raises(ConfigError, match="inside the run folder"):
        outputs.check_file(tmp_path / "run" / "sub" / "r.md", "--output")


@pytest.mark.parametrize("fmt,text,ours", [
    ("csv", "run,kind,method,dataset,fpr95,auroc,aupr_in,aupr_out,id_accuracy,convention,paper_fpr95,"
            "paper_auroc,paper_row\n", True),
    ("csv", "a,b\n1,2\n", False),
    ("md", "# lbfood report\n\nID: x\n", True),
    ("md", "# My notes\n", False),
    ("json", "[1, 2]", False),
    ("json", "not json", False),
])
def test_lbfood_recognises_its_own_reports(tmp_path, fmt, text, ours):
    p = tmp_path / f"r.{fmt}"
    p.write_text(text)
    assert writers.is_report(p, fmt) is ours


def test_an_output_folder_is_new_empty_or_lbfoods(tmp_path):
    assert outputs.check_dir(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    outputs.check_dir(tmp_path / "empty")
    user = tmp_path / "user"
    user.mkdir()
    (user / "index.html").write_text("<p>mine</p>")
    with pytest.raises(ConfigError, match="already holds files that lbfood did not write"):
        outputs.check_dir(user)
    outputs.claim_dir(tmp_path / "empty")
    (tmp_path / "empty" / "index.html").write_text("lbfood's")
    assert outputs.check_dir(tmp_path / "empty") == tmp_path / "empty"  # marked: lbfood's own
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        outputs.check_dir(user / "index.html")


def test_report_and_explain_refuse_a_users_folder_and_file(tmp_path, make_run, small_backdrops, monkeypatch):
    """21.10: `explain --out DIR` and `report --plots DIR` replaced the user's index.html and PNGs; `--output`
    onto an existing user file (or a link) replaced it. Now one line, exit 2, the user's files unchanged;
    lbfood's own earlier output is still replaced."""
    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "index.html").write_text("mine")
    (user / "norms.png").write_bytes(b"my png")
    one_error_line(invoke("report", "--model", run, "--method", "msp", "--plots", user, *CPU),
                   "--plots", "already holds files that lbfood did not write")
    one_error_line(invoke("explain", user / "norms.png", "--model", run, "--out", user, "--device", "cpu"),
                   "--out", "already holds files that lbfood did not write")
    notes = tmp_path / "notes.md"
    notes.write_text("# my notes\n")
    one_error_line(invoke("report", "--model", run, "--method", "msp", "--output", notes, *CPU),
                   "already exists and lbfood did not write it")
    assert (user / "index.html").read_text() == "mine" and (user / "norms.png").read_bytes() == b"my png"
    assert notes.read_text() == "# my notes\n"
    # lbfood's own report (and plots folder) are replaced on a second run
    for _ in range(2):
        r = invoke("report", "--model", run, "--method", "msp", "--output", "r.md", "--plots", "pics", *CPU)
        assert r.exit_code == 0, r.output
    assert (tmp_path / "r.md").read_text().startswith("# lbfood report")
