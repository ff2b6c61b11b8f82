"""Stage lines and timing (``s4kit.engine.stages``): what a run says after its progress bar."""
import io
import re
import time

import pytest

from s4kit.engine.stages import stage


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_stage_prints_one_line_with_its_duration_and_records_the_seconds():
    out, timing = io.StringIO(), {}
    with stage("final evaluation", timing, progress=True, stream=out):
        time.sleep(0.05)
    assert re.fullmatch(r"final evaluation \.\.\. \d+\.\d s\n", out.getvalue())
    assert list(timing) == ["final evaluation"] and 0.05 <= timing["final evaluation"] < 5
    shown = float(out.getvalue().split("... ")[1].split(" s")[0])
    assert shown == pytest.approx(timing["final evaluation"], abs=0.051)


def test_without_progress_nothing_is_printed_but_the_time_is_kept():
    out, timing = Terminal(), {}
    with stage("figures", timing, progress=False, stream=out):
        pass
    assert out.getvalue() == "" and timing["figures"] >= 0


def test_on_a_terminal_the_name_shows_while_the_stage_runs():
    out, timing = Terminal(), {}
    with stage("figures", timing, progress=True, stream=out):
        assert out.getvalue() == "figures ..."
    assert re.fullmatch(r"figures \.\.\.\rfigures \.\.\. \d+\.\d s\n", out.getvalue())


def test_a_failing_stage_keeps_its_time_and_prints_no_duration():
    out, timing = io.StringIO(), {"figures": 1.0}
    with pytest.raises(KeyError):
        with stage("figures", timing, progress=True, stream=out):
            raise KeyError("x")
    assert out.getvalue() == "" and timing["figures"] >= 1.0
