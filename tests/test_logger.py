"""``log.csv`` is appended row by row and TensorBoard mirrors it (``s4kit.engine.logger``)."""
import pytest

from s4kit.engine.logger import CSVLog, read_log

from conftest import tiny_overrides


def scalars(tb_dir, key):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(key)]


def test_rows_are_appended_without_rewriting_the_file(tmp_path, monkeypatch):
    path = tmp_path / "log.csv"
    log = CSVLog(path)
    rewrites = []
    original = CSVLog._rewrite
    monkeypatch.setattr(CSVLog, "_rewrite", lambda self: (rewrites.append(len(self.rows)), original(self)))
    log.append({"iter": 2, "loss": 1.5, "lr": 0.01})
    first, inode = path.read_bytes(), path.stat().st_ino
    assert first == b"iter,loss,lr\r\n2,1.5,0.01\r\n" and rewrites == [1]  # a new file: header and row
    log.append({"iter": 4, "loss": 1.25, "lr": 0.005})
    log.append({"iter": 6, "loss": float("nan")})  # NaN and a missing key: empty cells
    assert path.stat().st_ino == inode and rewrites == [1]  # the same file, appended
    assert path.read_bytes() == first + b"4,1.25,0.005\r\n6,,\r\n"
    assert read_log(path) == [{"iter": 2, "loss": 1.5, "lr": 0.01}, {"iter": 4, "loss": 1.25, "lr": 0.005},
                              {"iter": 6}]


def test_a_new_key_widens_the_header_once(tmp_path):
    path = tmp_path / "log.csv"
    log = CSVLog(path)
    log.append({"iter": 2, "loss": 1.5})
    log.append({"iter": 4, "loss": 1.0, "val_miou": 30.0})
    widened = path.read_bytes()
    assert widened == b"iter,loss,val_miou\r\n2,1.5,\r\n4,1.0,30.0\r\n"
    inode = path.stat().st_ino
    log.append({"iter": 6, "loss": 0.5})
    assert path.stat().st_ino == inode and path.read_bytes() == widened + b"6,0.5,\r\n"


def test_a_resume_drops_rows_past_the_checkpoint_then_appends(tmp_path):
    path = tmp_path / "log.csv"
    log = CSVLog(path)
    for i in (2, 4, 6):
        log.append({"iter": i, "loss": float(i)} | ({"val_miou": 1.0} if i == 6 else {}))
    log = CSVLog(path, keep_until=4)  # checkpoint at 4: the row of 6 (and its column) go
    assert path.read_bytes() == b"iter,loss\r\n2,2.0\r\n4,4.0\r\n"
    inode = path.stat().st_ino
    log.append({"iter": 6, "loss": 5.0})
    assert path.stat().st_ino == inode and [r["loss"] for r in read_log(path)] == [2.0, 4.0, 5.0]
    CSVLog(path)  # a new run (keep_until 0) starts a new log
    assert not path.exists()


def test_tensorboard_holds_each_step_once_after_a_resume(tmp_path):
    tb = tmp_path / "tb"
    log = CSVLog(tmp_path / "log.csv", tensorboard=tb)
    for i in (1, 2, 3):
        log.append({"iter": i, "loss": 10.0 + i, "lr": float("nan")})
    log.close()
    log = CSVLog(tmp_path / "log.csv", keep_until=2, tensorboard=tb)  # killed after logging 3, checkpoint 2
    for i in (3, 4):
        log.append({"iter": i, "loss": 20.0 + i})
    log.close()
    assert len(list(tb.glob("events.out.tfevents.*"))) == 2
    assert scalars(tb, "loss") == [(1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0)]
    assert [(r["iter"], r["loss"]) for r in read_log(tmp_path / "log.csv")] == scalars(tb, "loss")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb))
    acc.Reload()
    assert "lr" not in acc.Tags()["scalars"]  # NaN left out, as the empty CSV cell


class Killed(Exception):
    pass


def test_a_run_writes_tensorboard_scalars_equal_to_its_log(digits_root, tmp_path, monkeypatch):
    from s4kit.config import load_config
    from s4kit.engine import train
    from s4kit.methods.supervised import Supervised

    run = tmp_path / "run"
    cfg = lambda: load_config("digits/supervised", tiny_overrides(digits_root, run) + [  # noqa: E731
        "train.log_every=1", "train.checkpoint_every=2", "viz.enabled=false", "viz.snapshots=0"])
    original = Supervised.after_step

    def dies_in_iteration_4(self, step):
        if step == 3:
            raise Killed
        original(self, step)

    monkeypatch.setattr(Supervised, "after_step", dies_in_iteration_4)
    with pytest.raises(Killed):  # rows 1, 2, 3 logged, last.pt at 2
        train(cfg(), progress=False)
    assert [r["iter"] for r in read_log(run / "log.csv")] == [1, 2, 3]
    monkeypatch.setattr(Supervised, "after_step", original)
    train(cfg(), progress=False)
    rows = read_log(run / "log.csv")
    assert [r["iter"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "lr"):
        assert scalars(run / "tb", key) == [(r["iter"], pytest.approx(r[key], rel=1e-6)) for r in rows]
