"""lbfood/engine/sweep/folder.py: a sweep folder is recognised by its study (study.json, or a study.db that
holds the study), never by file names; a sweep continues only with the storage it recorded."""

import dataclasses
import json
from pathlib import Path

import pytest

from lbfood.engine.config import FinetuneConfig
from lbfood.engine.errors import ConfigError
from lbfood.engine.sweep import folder, study
from lbfood.engine.sweep.space import SweepConfig

RECIPE = dict(epochs=1, batch_size=64, device="cpu", workers=0, probe_batches=1)


def _sc(parent, out, **kw) -> SweepConfig:
    return SweepConfig(recipe=FinetuneConfig(parent=str(parent), **RECIPE), out=str(out), methods=("react",), **kw)


def _tree(p: Path) -> dict[str, bytes | None]:
    return {str(f.relative_to(p)): (f.read_bytes() if f.is_file() else None) for f in sorted(p.rglob("*"))}


def test_your_own_sweep_files_a_run_folder_and_look_alike_records_are_refused_untouched(tmp_path, make_run):
    parent = make_run(tmp_path)
    mine = tmp_path / "mine"
    (mine / "trials" / "control").mkdir(parents=True)
    (mine / "sweep.json").write_text('{"my": "notes"}')
    (mine / "README.txt").write_text("my sweep, by hand")
    (mine / "trials" / "control" / "notes.txt").write_text("x")
    before = _tree(mine)
    with pytest.raises(ConfigError, match=r"--out .*mine already holds files and is not a sweep folder \(no study.json"):
        study.open_study(_sc(parent, mine))
    assert _tree(mine) == before
    (parent / ".lock").write_text("")  # what a run's writer leaves: not a sweep marker
    before = _tree(parent)
    with pytest.raises(ConfigError, match="already holds files and is a run folder"):
        study.open_study(_sc(parent, parent))
    assert _tree(parent) == before
    for name, text in (("study.db", "not a database"), ("study.json", '{"study": "mine", "storage": null}'),
                       ("study.json", "[")):
        other = tmp_path / f"other-{name}-{len(text)}"
        other.mkdir()
        (other / name).write_text(text)
        with pytest.raises(ConfigError, match="is not a sweep folder"):
            study.open_study(_sc(parent, other))
        assert [p.name for p in other.iterdir()] == [name]


def test_a_sweep_records_its_storage_and_refuses_another(tmp_path, monkeypatch, make_run, small_backdrops):
    """A finished sweep rerun with another --storage would retrain every trial into the same trials/
    folders: refused, before the other storage is created. The same storage (given or default) continues;
    a sweep made before study.json existed is recognised by the study in its study.db."""
    monkeypatch.chdir(tmp_path)
    parent = make_run(tmp_path)
    sc = _sc(parent, tmp_path / "sw", lam=("0",))  # the control alone: one short trial
    assert study.work(sc) == 1
    record = json.loads((tmp_path / "sw" / "study.json").read_text())
    assert {k: record[k] for k in ("study", "storage")} == {"study": "lbfood-sweep", "storage": None}
    assert len(record["id"]) == 32  # the sweep folder's id (sweep/identity.py): workers must find it
    trained = (tmp_path / "sw/trials/control/model.safetensors").stat().st_mtime_ns
    other = f"sqlite:///{tmp_path / 'other.db'}"
    with pytest.raises(ConfigError, match=r"is a sweep whose study is in study.db, not sqlite:///.*other.db; continue "
                                          r"it with the same command without --storage"):
        study.work(dataclasses.replace(sc, storage=other))
    assert not (tmp_path / "other.db").exists()
    same = dataclasses.replace(sc, storage=folder.default_storage(tmp_path / "sw"))
    assert study.work(same) == 0 and study.work(sc) == 0  # the recorded storage, named or not: nothing to do
    (tmp_path / "sw" / "study.json").unlink()  # a sweep from before the record
    assert study.work(sc) == 0
    with pytest.raises(ConfigError, match="is a sweep whose study is in study.db"):
        study.open_study(dataclasses.replace(sc, storage=other))
    assert (tmp_path / "sw/trials/control/model.safetensors").stat().st_mtime_ns == trained

    ext = _sc(parent, tmp_path / "sw2", lam=("0",), storage=other)
    assert study.work(ext) == 1 and not (tmp_path / "sw2" / "study.db").exists()
    with pytest.raises(ConfigError, match=f"continue it with the same command --storage {other}"):
        study.open_study(dataclasses.replace(ext, storage=None))
    assert not (tmp_path / "sw2" / "study.db").exists()
    assert study.work(ext) == 0
