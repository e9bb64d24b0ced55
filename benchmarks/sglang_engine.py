"""SGLang Diffusion as a benchmark peer: its own FLUX pipeline, run in its own environment, driven over JSON lines.

Shared by bench_vs_diffusers.py (its exact path, timed against Easel and Diffusers) and bench_cache.py (its exact path
and its cache-dit integration, with how many transformer calls cache-dit served). The benchmarks are run as
`python benchmarks/x.py`, so `import sglang_engine` finds this file through sys.path[0].

SGLang's declared requirements are CUDA-only; `bash ../shared/tools/sglang-cpu-venv.sh /tmp/sglvenv` (minutes,
network) builds a CPU environment for it, run as `PYTHONPATH=/tmp/sglvenv/shim /tmp/sglvenv/bin/python`. The
engine starts that Python on a driver script (SGLANG_DRIVER) and sends it one request a line; the driver answers one
JSON line each with the seconds `generate` took inside its process (IPC excluded: add 5-7 ms a request for the wall
time seen from outside, which `SGLangReply.wall` holds) and saves the image as .npy.

Server arguments that matter for a like-for-like run (../shared/notes/speed-and-scale.md): model_id="FLUX.1-dev"
(SGLang's registry does not recognise a local folder by its path), backend="sglang" (with "auto" an unrecognised
folder silently runs SGLang's Diffusers wrapper), the embedded guidance as the embedded_cfg_scale server argument (not
the request's guidance_scale), sleep_on_idle=True (its idle scheduler spins a core otherwise) and
disable_conditioning_cache=True (it caches text encodings across requests otherwise).
"""

import dataclasses
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_SGLANG_VENV = Path(tempfile.gettempdir()) / "sglvenv"  # what ../shared/tools/sglang-cpu-venv.sh builds
DEFAULT_SGLANG_PYTHON = DEFAULT_SGLANG_VENV / "bin" / "python"
BUILD_SCRIPT = "../shared/tools/sglang-cpu-venv.sh"  # relative to the repository root, where the benchmarks run
TAG = "@@BENCH@@ "

# This text is written to a temporary file and started with SGLang's Python; it answers one JSON line per request on
# stdout (tagged, since SGLang logs there too) and saves each image as .npy. SGLang spawns its worker process, which
# imports this file again as `__mp_main__`: module-level code therefore runs inside the worker too, where the
# denoising happens. There the thread count is set, and, when BENCH_SGLANG_STATS names a file, a hook appends per
# request how many transformer calls cache-dit served from its cache.
SGLANG_DRIVER = r'''
import json, os, sys, time

import numpy as np
import torch

torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
TAG = "@@BENCH@@ "


def _install_stats_hook():
    path = os.environ.get("BENCH_SGLANG_STATS")
    if not path:
        return
    try:
        from sglang.multimodal_gen.runtime.pipelines_core.stages.denoising import DenoisingStage
    except Exception:
        return
    original = DenoisingStage.forward

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        skipped = 0
        if getattr(self, "_cache_dit_enabled", False):
            transformer = getattr(self, "transformer", None)
            manager = getattr(transformer, "_context_manager", None)
            names = getattr(transformer, "_context_names", None)
            try:
                context = manager.get_context(names[0])
                skipped = len(context.get_cached_steps()) + len(context.get_cfg_cached_steps())
            except Exception:
                skipped = None
        with open(path, "a") as stats:
            stats.write(json.dumps({"skipped": skipped}) + "\n")
        return out

    DenoisingStage.forward = forward


_install_stats_hook()


def _say(message):
    print(TAG + json.dumps(message), flush=True)


def _teacache_note():
    """None where SGLang's FLUX path can run TeaCache; else why not."""
    import inspect

    from sglang.multimodal_gen.configs.sample.flux import FluxSamplingParams
    from sglang.multimodal_gen.runtime.models.dits import flux

    source = inspect.getsource(flux.FluxTransformer2DModel.forward)
    hooks = ("should_skip_forward_for_cached_states", "maybe_cache_states", "_compute_teacache_decision")
    reasons = []
    if not any(hook in source for hook in hooks):
        reasons.append("its FLUX DiT (FluxTransformer2DModel.forward) never consults the TeaCache hooks it inherits")
    if getattr(FluxSamplingParams, "teacache_params", None) is None:
        reasons.append("FluxSamplingParams carries no TeaCache coefficients (teacache_params is None)")
    return "; ".join(reasons) or None


def _stats_lines(path):
    if not path:
        return []
    try:
        with open(path) as stats:
            return stats.read().splitlines()
    except FileNotFoundError:
        return []


def main():
    config = json.load(open(sys.argv[1]))
    from sglang.multimodal_gen import DiffGenerator

    server = dict(config["server"])
    server["text_encoder_precisions"] = tuple(server["text_encoder_precisions"])
    generator = DiffGenerator.from_pretrained(**server)
    import sglang

    teacache = _teacache_note() if config.get("teacache_probe") else None
    _say({"ready": True, "version": getattr(sglang, "__version__", "?"), "teacache": teacache})
    stats_path = os.environ.get("BENCH_SGLANG_STATS", "")
    for line in sys.stdin:
        message = json.loads(line)
        if message.get("op") == "quit":
            break
        seen = len(_stats_lines(stats_path))
        error = None
        start = time.perf_counter()
        try:
            result = generator.generate(sampling_params_kwargs=message["kwargs"])
        except Exception as exc:
            result, error = None, f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - start
        if isinstance(result, list):
            result = result[0] if result else None
        if result is None or result.samples is None:
            _say({"error": error or "SGLang returned no image"})
            continue
        samples = result.samples
        if isinstance(samples, torch.Tensor):
            samples = samples.detach().float().cpu().numpy()
        samples = np.asarray(samples, dtype=np.float32)
        while samples.ndim > 3:
            samples = samples[0]
        np.save(message["npy"], np.moveaxis(samples, 0, -1))  # CHW -> HWC
        lines = _stats_lines(stats_path)
        skipped = json.loads(lines[-1])["skipped"] if len(lines) > seen else None
        _say({"seconds": seconds, "skipped": skipped})
    generator.shutdown()


if __name__ == "__main__":
    main()
'''


def build_hint(python: Path) -> str:
    """How to build the environment `python` (DIR/bin/python) belongs to, from the repository root."""
    venv = python.parent.parent if python.parent.name == "bin" else DEFAULT_SGLANG_VENV
    hint = f"`bash {BUILD_SCRIPT} {venv}`, minutes and network"
    if venv / "bin" / "python" != python:
        hint += f", then pass --sglang-python {venv / 'bin' / 'python'}"
    return hint


def sglang_python_unavailable(python: Path) -> str | None:
    """Why the SGLang environment at `python` cannot be used (and how to build one), or None."""
    if not python.exists():
        return f"no SGLang environment at {python} (build one with {build_hint(python)})"
    shim = python.parent.parent / "shim"
    if not (shim / "sitecustomize.py").exists():
        return f"{python} has no {shim}/sitecustomize.py (build its environment with {build_hint(python)})"
    return None


class SGLangError(Exception):
    """SGLang did not start, or did not answer a request (the message says why, from its log where it can)."""


@dataclasses.dataclass
class SGLangReply:
    seconds: float  # `generate` inside SGLang's process
    wall: float  # the whole request seen from here: sending it, SGLang's work, its reply, loading the image
    image: np.ndarray  # (H, W, C) float32 in 0..1
    skipped: int | None  # transformer calls cache-dit served (with cache_stats; else None)


class SGLangEngine:
    """SGLang's DiffGenerator on `folder` (a FLUX.1-dev-layout folder) in a process of its own.

    `generate(kwargs)` sends SGLang's `sampling_params_kwargs` (prompt, seed, height, width, num_inference_steps, and
    any of its cache-dit switches; save_output=False is added) and returns an SGLangReply. `cache_stats=True`
    counts per request the transformer calls cache-dit served from its cache; `teacache_probe=True` sets
    `teacache_note` to why SGLang's FLUX path cannot run TeaCache (None where it can). Its working folder (driver,
    log) is removed on `close`, and kept for a look when anything failed.
    """

    name = "sglang"

    def __init__(
        self,
        python: Path,
        folder: Path,
        *,
        embedded_cfg: float,
        threads: int,
        precision: str = "fp32",
        cache_stats: bool = False,
        teacache_probe: bool = False,
        workdir_prefix: str = "bench_sglang_",
        start_timeout: float = 900,
        request_timeout: float = 600,
    ):
        self.workdir = Path(tempfile.mkdtemp(prefix=workdir_prefix))
        self.request_timeout = request_timeout
        driver = self.workdir / "driver.py"
        driver.write_text(SGLANG_DRIVER)
        server = {
            "model_path": str(folder.resolve()),  # the driver runs in its own working directory
            "model_id": "FLUX.1-dev",  # SGLang's registry would not recognise the folder by its path
            "backend": "sglang",  # with "auto" an unrecognised folder silently runs SGLang's Diffusers wrapper
            "num_gpus": 1,
            "dit_precision": precision,
            "vae_precision": precision,
            "text_encoder_precisions": [precision, precision],  # CLIP and T5
            "embedded_cfg_scale": embedded_cfg,  # a server argument in SGLang, not the request's guidance_scale
            "sleep_on_idle": True,  # its idle scheduler spins a core otherwise
            "disable_conditioning_cache": True,  # it caches text encodings across requests otherwise
        }
        (self.workdir / "config.json").write_text(json.dumps({"server": server, "teacache_probe": teacache_probe}))
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(python.parent.parent / "shim"),
            OMP_NUM_THREADS=str(threads),
            BENCH_THREADS=str(threads),
        )
        env.pop("BENCH_SGLANG_STATS", None)
        if cache_stats:
            env["BENCH_SGLANG_STATS"] = str(self.workdir / "stats.jsonl")
        self.log_path = self.workdir / "sglang.log"
        self.log = open(self.log_path, "w")  # closed after the reader thread, which writes SGLang's stdout to it
        self.process = subprocess.Popen(
            [str(python), str(driver), str(self.workdir / "config.json")],
            cwd=self.workdir,  # SGLang writes its outputs/ folder relative to the working directory
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.replies: queue.Queue = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.count = 0
        self.failed = False
        start = time.perf_counter()
        ready = self._reply(timeout=start_timeout)
        self.start_seconds = time.perf_counter() - start
        if "ready" not in ready:
            self.failed = True  # its folder is kept: the error names the log
            if self.process.poll() is None:
                self.process.kill()  # only the driver this engine started
            self.reader.join(timeout=30)
            self.log.close()
            raise SGLangError(ready.get("error", "SGLang did not start"))
        self.version: str | None = ready.get("version")
        self.teacache_note: str | None = ready.get("teacache")

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.startswith(TAG):
                self.replies.put(json.loads(line[len(TAG) :]))
            else:
                self.log.write(line)
        self.replies.put({"error": f"the SGLang driver exited (log: {self.log_path}): {self._last_error()}"})

    def _reply(self, timeout: float) -> dict[str, Any]:
        try:
            return self.replies.get(timeout=timeout)
        except queue.Empty:
            return {"error": f"no answer from SGLang in {timeout:.0f} s (log: {self.log_path})"}

    def _last_error(self) -> str:
        self.log.flush()
        text = re.sub(r"\x1b\[[0-9;]*m", "", self.log_path.read_text(errors="replace"))
        found = re.findall(r"Error (?:executing request|during execution)[^:]*: (.*)", text)
        tail = [line for line in text.splitlines() if line.strip()][-1:]
        return found[-1].strip() if found else (tail[0] if tail else "no log")

    def generate(self, kwargs: dict[str, Any]) -> SGLangReply:
        self.count += 1
        npy = self.workdir / f"image{self.count}.npy"
        start = time.perf_counter()
        self.process.stdin.write(json.dumps({"kwargs": {**kwargs, "save_output": False}, "npy": str(npy)}) + "\n")
        self.process.stdin.flush()
        reply = self._reply(timeout=self.request_timeout)
        if "error" in reply:
            self.failed = True
            raise SGLangError(f"{reply['error']}; SGLang's log says: {self._last_error()}")
        image = np.load(npy)
        wall = time.perf_counter() - start
        npy.unlink()
        return SGLangReply(reply["seconds"], wall, image, reply.get("skipped"))

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=120)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()  # only the driver this engine started
        self.reader.join(timeout=30)  # it reports the exit from the log, so the log closes after it
        self.log.close()
        if not self.failed:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "SGLangEngine":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
