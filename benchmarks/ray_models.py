"""A "1 s trial" for the executor benchmark (``ray_vs_agent.py``): the trivial model of
``models.py`` whose ``fit`` first sleeps ``$BENCH_TRIAL_SLEEP`` seconds (default 1), so a
trial is the sleep plus Keras' per-model cost, run by the real Keras runner in every executor.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras_tuner as kt  # noqa: E402
from models import build_trivial, load_trivial  # noqa: E402, F401  (load_trivial: the study's data)


class SleepTrivial(kt.HyperModel):
    def build(self, hp: Any) -> Any:
        return build_trivial(hp)

    def fit(self, hp: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        time.sleep(float(os.environ.get("BENCH_TRIAL_SLEEP", "1")))
        return model.fit(*args, **kwargs)
