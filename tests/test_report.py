"""The results table: grouping by (method, model, split), mean ± std over seeds, row order."""
from s4kit.engine.report import summarize


def _m(method, model, miou, seed, split="1_16"):
    return {"dataset": "digits", "method": method, "model": model, "split": split, "miou": miou, "seed": seed}


def test_summarize_keeps_networks_apart_and_orders_baselines_before_methods():
    runs = [_m("allspark", "segformer", 30.0, 0), _m("supervised", "segformer", 20.0, 0),
            _m("supervised", "segformer", 22.0, 1), _m("supervised", "", 33.0, 0), _m("rc2l", "maskformer", 31.0, 0),
            _m("supervised_maskformer", "maskformer", 26.0, 0), _m("meanteacher", "", 36.0, 0),
            _m("supervised", "", 60.0, 0, split="full"), {**_m("reco", "", 32.0, 0), "model": None}]
    runs[-1].pop("model")  # runs written before the "model" entry existed count as DeepLabV3+
    rows = summarize(runs)
    assert [r["method"] for r in rows] == ["supervised", "meanteacher", "reco", "supervised_maskformer", "rc2l (maskformer)",
                                          "supervised (segformer)", "allspark (segformer)", "supervised"]
    seg = rows[5]
    assert seg["seeds"] == 2 and seg["miou"] == "21.0 ± 1.4"  # mean and sample std of 20, 22
    assert rows[-1]["split"] == "full"


def test_run_label_names_the_network_when_it_is_not_deeplab():
    from s4kit.engine.latent import run_label

    assert run_label({"method": "reco", "split": "1_16", "model": "deeplabv3plus"}) == "reco (1_16)"
    assert run_label({"method": "supervised", "split": "1_16", "model": "segformer"}) == "supervised (segformer, 1_16)"
    assert run_label({"method": "supervised_maskformer", "split": "1_16", "model": "maskformer"}) == \
        "supervised_maskformer (1_16)"


def test_csv_holds_numbers_and_leaves_missing_cells_empty(tmp_path):
    import csv
    import json

    from s4kit.engine.report import report_table

    runs = [{**_m("supervised", "", 30.0, 0), "silhouette": 0.25, "pseudo_label_precision": None},
            {**_m("supervised", "", 33.0, 1), "silhouette": 0.35, "pseudo_label_precision": float("nan")},
            {**_m("meanteacher", "", 36.5, 0), "pseudo_label_precision": 98.25}]
    for i, m in enumerate(runs):
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "metrics.json").write_text(json.dumps(m).replace("NaN", "null"))
    rows = {r["method"]: r for r in csv.DictReader(report_table(tmp_path, csv=True).splitlines())}
    sup, mt = rows["supervised"], rows["meanteacher"]
    assert float(sup["miou_mean"]) == 31.5 and float(sup["miou_std"]) == 2.1213  # sample std of 30, 33
    assert float(sup["silhouette_mean"]) == 0.3 and sup["pl_precision_mean"] == sup["pl_precision_std"] == ""
    assert float(mt["pl_precision_mean"]) == 98.25 and mt["miou_std"] == ""  # one seed: no spread
    assert "–" not in report_table(tmp_path, csv=True)
