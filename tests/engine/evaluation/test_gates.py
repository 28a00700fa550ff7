"""CI checks (engine/gates.py): the gate parser, name checks, gate evaluation and the OOD share."""

import pytest

from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation import gates
from lbfood.engine.evaluation.gates import Gate, GateCheck

METHODS = ("react", "energy", "msp")


@pytest.mark.parametrize("text,want", [
    ("fpr95<=30", (None, None, "fpr95", "<=", 30.0)),
    (" react.auroc >= 90 ", ("react", None, "auroc", ">=", 90.0)),
    ("svhn.fpr95<20", (None, "svhn", "fpr95", "<", 20.0)),
    ("react.svhn.AUPR_IN>85.5", ("react", "svhn", "aupr_in", ">", 85.5)),
    ("energy.folder:ci/ood.v2.aupr_out>=70%", ("energy", "folder:ci/ood.v2", "aupr_out", ">=", 70.0)),
    ("folder:a.b.fpr95<=5", (None, "folder:a.b", "fpr95", "<=", 5.0)),
    ("id_acc>=0.9", (None, None, "id_acc", ">=", 0.9)),
    ("id_acc > 90%", (None, None, "id_acc", ">", 0.9)),
    ("auroc>=1e1", (None, None, "auroc", ">=", 10.0)),
])
def test_parse_valid(text, want):
    g = gates.parse(text, METHODS)
    assert (g.method, g.dataset, g.metric, g.op, g.bound) == want
    assert g.text == text.strip()
    assert Gate.parse(text, METHODS) == g


def test_parse_takes_methods_from_the_registry_by_default():
    assert gates.parse("mahalanobis.svhn.fpr95<=5").method == "mahalanobis"
    assert gates.parse("nosuch.fpr95<=5").dataset == "nosuch"  # not a scorer: a dataset name


@pytest.mark.parametrize("text,needle", [
    ("fpr95=30", "expected [METHOD.][DATASET.]METRIC OP BOUND"),
    ("fpr95==30", "expected"),
    ("fpr95=<30", "expected"),
    ("fpr95<=", "expected"),
    ("<=30", "expected"),
    ("fpr95<=30<=40", "expected"),
    ("fpr90<=30", "unknown metric 'fpr90'; valid: fpr95, auroc, aupr_in, aupr_out, id_acc"),
    ("react.<=30", "unknown metric ''"),
    (".fpr95<=30", "nothing before the dot"),
    ("react..fpr95<=30", "nothing between the dots"),
    ("auroc>=high", "the bound 'high' is not a number"),
    ("auroc>=nan", "finite"),
    ("fpr95<=inf", "finite"),
    ("auroc>=101", "auroc is in percent, from 0 to 100"),
    ("fpr95<=-1", "from 0 to 100"),
    ("id_acc>=90", "id_acc is a fraction from 0 to 1 (id_acc>=0.9), or a percent with % (id_acc>=90%)"),
    ("react.id_acc>=0.9", "id_acc is the run's ID accuracy, the same for every method and dataset; write "
                          "id_acc>=0.9"),
])
def test_parse_invalid(text, needle):
    with pytest.raises(ConfigError) as e:
        gates.parse(text, METHODS)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_check_names_against_the_resolved_report():
    ood = ("svhn", "folder:x")
    ok = gates.parse_all(["fpr95<=30", "react.svhn.auroc>=90", "folder:x.fpr95<1", "id_acc>=0.5"], METHODS)
    gates.check_names(ok, ("react",), ood)
    with pytest.raises(ConfigError, match=r"method energy is not reported; add --method energy or gate on one "
                                          r"of react$"):
        gates.check_names(gates.parse_all(["energy.auroc>=90"], METHODS), ("react",), ood)
    with pytest.raises(ConfigError, match=r"places is neither a scorer nor an OOD dataset of this report; OOD "
                                          r"datasets: svhn, folder:x; methods: react$"):
        gates.check_names(gates.parse_all(["places.auroc>=90"], METHODS), ("react",), ood)
    with pytest.raises(ConfigError, match="places is not an OOD dataset of this report"):
        gates.check_names(gates.parse_all(["react.places.auroc>=90"], METHODS), ("react",), ood)


@pytest.mark.parametrize("value,op,bound,want", [
    (0.3, "<=", 0.3, True), (0.3, "<", 0.3, False), (0.3, ">=", 0.3, True), (0.3, ">", 0.3, False),
    (0.3 + 5e-10, "<=", 0.3, True), (0.3 + 2e-9, "<=", 0.3, False), (0.3 - 2e-9, "<", 0.3, True),
    (0.29, ">", 0.3, False), (0.31, ">", 0.3, True),
])
def test_holds_counts_values_within_tolerance_as_equal(value, op, bound, want):
    assert gates.holds(value, op, bound) is want


def test_evaluate_average_dataset_every_method_and_id_acc():
    # Fractions as RunResult.metrics holds them; 0.1 + 0.2 averages to 0.15000000000000002 in floats.
    cell = {"fpr95": 0.3, "auroc": 0.9, "aupr_in": 0.8, "aupr_out": 0.7}
    metrics = {
        "react": {"svhn": cell, "average": {**cell, "fpr95": (0.1 + 0.2) / 2}},
        "energy": {"svhn": {**cell, "fpr95": 0.5}, "average": {**cell, "fpr95": 0.45}},
    }
    gs = gates.parse_all(["fpr95<=15", "react.svhn.fpr95<30", "svhn.auroc>=90", "id_acc>=0.9"], METHODS)
    checks = gates.evaluate(gs, metrics, id_accuracy=0.875)
    assert [(c.gate, c.method, c.dataset, c.metric, c.passed) for c in checks] == [
        ("fpr95<=15", "react", "average", "fpr95", True),  # 15.000000000000002 % is 15 % within 1e-9
        ("fpr95<=15", "energy", "average", "fpr95", False),
        ("react.svhn.fpr95<30", "react", "svhn", "fpr95", False),  # equal, and < is strict
        ("svhn.auroc>=90", "react", "svhn", "auroc", True),
        ("svhn.auroc>=90", "energy", "svhn", "auroc", True),
        ("id_acc>=0.9", None, None, "id_acc", False),
    ]
    assert checks[1] == GateCheck("fpr95<=15", "energy", "average", "fpr95", "<=", 15.0, 45.0, False)
    assert checks[-1] == GateCheck("id_acc>=0.9", None, None, "id_acc", ">=", 0.9, 0.875, False)


def test_ood_share_counts_scored_images_only():
    s = gates.ood_share(["ID", "OOD", None, "ID", "ID", None], 0.25)
    assert (s.scored, s.ood, s.share, s.exceeded) == (4, 1, 0.25, False)  # 25 % is not more than 25 %
    s = gates.ood_share(["OOD", "OOD", "ID"], 0.5)
    assert (s.scored, s.ood, s.exceeded) == (3, 2, True)
    s = gates.ood_share([None, None], 0.0)
    assert (s.scored, s.share, s.exceeded) == (0, 0.0, False)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="--max-ood-share is a fraction from 0 to 1"):
            gates.check_share(bad)


def test_ood_share_with_nothing_read_is_unread_not_within():
    s = gates.ood_share([None, None], 0.5)
    assert (s.files, s.scored, s.unread, s.exceeded) == (2, 0, True, False)
    assert not gates.ood_share(["ID", None], 0.5).unread
