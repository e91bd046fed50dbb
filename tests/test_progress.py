"""The epoch progress display, read as text: `epoch k/N` of the planned total across cnnlab's one-fit-per-epoch
loop (a continued run counting on from its kept epochs), a bar over the batches and the time left."""

from __future__ import annotations

import io
import re

import keras
import numpy as np
import pytest

from cnnlab.run.progress import EpochProgress, duration

FINISHED = (r"epoch (\d+)/5 ━{20} 4/4 · \d+ s · loss \d\.\d{4} · accuracy \d\.\d{4} · val_loss \d\.\d{4} · "
            r"val_accuracy \d\.\d{4} · (at most (\d) epochs? left, about \d+ s|the last planned epoch)")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def fit_epochs(progress: EpochProgress, first: int, last: int) -> None:
    """Epochs `first`..`last - 1` as cnnlab's loop trains them: one `fit` call each, Keras' own display off."""
    rng = np.random.default_rng(0)
    x = rng.random((32, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 2, 32), 2)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    for epoch in range(first, last):
        model.fit(x, y, batch_size=8, initial_epoch=epoch, epochs=epoch + 1, validation_data=(x, y),
                  callbacks=[progress], verbose=0)


@pytest.mark.integration
def test_a_continued_run_counts_epochs_of_the_planned_total_with_the_time_left() -> None:
    """Continued after 2 of 5 planned epochs: three finished lines, epoch 3/5 to 5/5, each with its full bar,
    its time, its figures and how many epochs (at most) and how long are left; a log gets no redrawn lines."""
    log = io.StringIO()
    fit_epochs(EpochProgress(5, start=2, stream=log), 2, 5)
    lines = log.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in log.getvalue(), log.getvalue()
    matches = [re.fullmatch(FINISHED, line) for line in lines]
    assert all(matches), lines
    assert [m[1] for m in matches] == ["3", "4", "5"]
    assert [m[3] for m in matches] == ["2", "1", None]
    assert "at most 1 epoch left" in lines[1] and lines[2].endswith("the last planned epoch")


@pytest.mark.integration
def test_on_a_terminal_the_line_is_redrawn_with_the_epochs_time_left() -> None:
    screen = Terminal()
    fit_epochs(EpochProgress(2, stream=screen), 0, 2)
    text = screen.getvalue()
    assert re.search(r"\repoch 1/2 ━{5}─{15} 1/4 · \d+ s left in this epoch", text), text
    finished = [part.removesuffix("\033[K") for part in re.split(r"[\r\n]", text) if "4/4 ·" in part]
    assert [line.split(" ")[1] for line in finished] == ["1/2", "2/2"]
    assert text.endswith("the last planned epoch\033[K\n")


def test_durations_read_as_a_person_says_them() -> None:
    assert [duration(s) for s in (0.4, 41, 89.6, 720, 4800, 5400, 30_000)] == \
        ["0 s", "41 s", "90 s", "12 min", "80 min", "1 h 30 min", "8 h 20 min"]
