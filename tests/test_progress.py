"""Progress: periodic lines off a terminal, nothing when disabled, ETAs from the measured rate."""
import io

from lt_dist.progress import Progress, format_seconds


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 12, 250, 7380)] == ["0s", "12s", "4m10s", "2h03m"]


def test_off_a_terminal_one_line_every_period_with_values_and_etas():
    now, out = [0.0], io.StringIO()
    progress = Progress(100, "epoch 0", every_s=30, stream=out, clock=lambda: now[0],
                        extra_left_s=lambda per_unit: per_unit * 300)  # 3 more epochs of 100 batches
    for step in range(1, 51):
        now[0] = step * 1.0  # one batch per second
        progress.update(1, loss=2.5 - step / 100, lr=0.1)
    lines = out.getvalue().splitlines()
    assert lines == ["epoch 0: 30/100 batch, loss 2.2, lr 0.1, ETA 1m10s, run ETA 6m10s"]  # at 30 s only
    progress.close()


def test_disabled_prints_nothing():
    out = io.StringIO()
    progress = Progress(10, "x", enabled=False, every_s=0, stream=out)
    progress.update(5, loss=1.0)
    progress.close()
    assert out.getvalue() == "" and progress.done == 5


def test_a_terminal_gets_a_bar_with_the_values():
    out = io.StringIO()
    progress = Progress(4, "epoch 1", stream=out, terminal=True)
    progress.update(2, loss=1.5)
    progress.close()
    assert "epoch 1" in out.getvalue() and "loss 1.5" in out.getvalue()
