"""The built-in demo model: a tiny FLUX.1 trained on scenes of simple shapes, and the judge of its images.

`DEMO_MODEL_PATH` is the committed Diffusers folder (written by `python -m easel.demo.train`); `judge` reads an image
and `score` compares what it shows with a prompt, attribute by attribute: Easel's quality measure.
"""

from pathlib import Path

from easel.demo.checker import Verdict, judge, score

DEMO_MODEL_PATH = Path(__file__).parent / "model"


__all__ = ["DEMO_MODEL_PATH", "Verdict", "judge", "score"]
