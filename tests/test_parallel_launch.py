"""The launch side of parallel runs: the layout resolver, bad layouts through the CLI (one line, exit 2, nothing
written, no rank started), four pipelines under every layout against one process, the Python API's rank group (its
calls, its errors, a rank killed mid-generation), and `easel generate` writing its file once on one node, on two
"nodes" and under torchrun.

A launch costs seconds (every rank imports torch and Easel), so the pipeline matrix runs every layout of one world
size in one launch, as tests/parallel_dit.py does: the world stays, its groups change, each model is loaded again.
"""

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from easel import DiffGenerator
from easel.cli.main import main
from easel.errors import InvalidInputError
from easel.runtime.distributed import ParallelLayout, get_world_rank, init_distributed
from easel.runtime.distributed.launch import run_on_ranks
from easel.runtime.distributed.layout import resolve_layout
from easel.runtime.distributed.rank_group import FAULT_VARIABLE, RankGroupError
from easel.testing.sd3 import TINY_SD3_SKIP_GUIDANCE_LAYERS
from tests.server_fixtures import process_alive

TOLERANCE = 1e-4  # max abs pixel difference, CPU fp32
VIDEO = {"num_frames": 9, "num_inference_steps": 2, "negative_prompt": "blurry", "guidance_scale": 5.0}
# Every request uses CFG, so that CFG parallelism has two passes to spread. Wan's 48x80 latents make 45 tokens a
# frame group, which no degree divides (padded shards); Wan2.2-A14B's two steps straddle its expert switch.
MODELS = {
    "flux": {"height": 64, "width": 64, "num_inference_steps": 2, "negative_prompt": "blurry", "true_cfg_scale": 4.0},
    "qwen-image": {
        "height": 64,
        "width": 64,
        "num_inference_steps": 2,
        "negative_prompt": "blurry",
        "true_cfg_scale": 4.0,
    },
    "wan-t2v": {"height": 48, "width": 80, **VIDEO},
    "wan2.2-a14b": {"height": 48, "width": 80, **VIDEO, "guidance_scale_2": 3.0},
}
# Z-Image's CFG normalization and SD3's skip-layer pass (three passes a step on two CFG ranks) are CFG parallelism's
# own concerns: those two run the CFG-parallel layouts only.
CFG_ONLY = {
    "z-image": {"height": 48, "width": 80, "num_inference_steps": 2, "guidance_scale": 4.0, "cfg_normalization": 1.2},
    "sd3": {
        "height": 48,
        "width": 80,
        "num_inference_steps": 3,  # skip-layer guidance never touches step 0
        "guidance_scale": 4.5,
        "skip_guidance_layers": TINY_SD3_SKIP_GUIDANCE_LAYERS,
        "skip_layer_guidance_stop": 1.0,
    },
}
REQUESTS = {**MODELS, **CFG_ONLY}
PROMPT = "a red circle on the left"
LAYOUTS = {
    2: {
        "ulysses2": ParallelLayout(ulysses=2),
        "ring2": ParallelLayout(ring=2),
        "cfg2": ParallelLayout(cfg=2),
        "tp2": ParallelLayout(tp=2),
    },
    4: {"ulysses2-ring2": ParallelLayout(ring=2, ulysses=2), "cfg2-ulysses2": ParallelLayout(cfg=2, ulysses=2)},
}
KILL_PROMPT = "rank 1 dies at step 2"


# --- the resolver ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "num_gpus,heads,uses_cfg,expected",
    [
        (1, 24, True, ParallelLayout()),
        (2, 24, False, ParallelLayout(ulysses=2)),
        (2, 24, True, ParallelLayout(cfg=2)),
        (4, 2, True, ParallelLayout(cfg=2, ulysses=2)),
        (4, 2, False, ParallelLayout(ring=2, ulysses=2)),  # Ulysses as far as the heads divide, ring for the rest
        (8, 24, True, ParallelLayout(cfg=2, ulysses=4)),
        (6, 4, False, ParallelLayout(ring=3, ulysses=2)),
        (3, 24, True, ParallelLayout(ulysses=3)),  # odd: no CFG parallel
        (4, None, False, ParallelLayout(ulysses=4)),  # heads unknown: all Ulysses
    ],
)
def test_default_layout(num_gpus, heads, uses_cfg, expected):
    assert resolve_layout(num_gpus, heads=heads, uses_cfg=uses_cfg) == expected


def test_given_degrees_are_kept_and_the_rest_filled():
    assert resolve_layout(4, ulysses=2, heads=24) == ParallelLayout(ring=2, ulysses=2)
    assert resolve_layout(4, ring=4, heads=24, uses_cfg=True) == ParallelLayout(ring=4)  # no CFG parallel unasked
    assert resolve_layout(4, tp=2, heads=24) == ParallelLayout(ulysses=2, tp=2)
    assert resolve_layout(4, cfg_parallel=True, heads=2) == ParallelLayout(cfg=2, ulysses=2)
    assert resolve_layout(8, cfg_parallel=True, ulysses=2, ring=2, tp=1, heads=2) == ParallelLayout(2, 2, 2, 1)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"num_gpus": 4, "ulysses": 2, "ring": 1}, r"cfg 1 x ring 1 x ulysses 2 x tp 1 = 2 ranks, not --num-gpus 4"),
        ({"num_gpus": 4, "ulysses": 3}, r"cfg 1 x ulysses 3 x tp 1 = 3 do not divide --num-gpus 4"),
        ({"num_gpus": 3, "cfg_parallel": True}, r"cfg 2 x tp 1 = 2 do not divide --num-gpus 3"),
        ({"num_gpus": 4, "ulysses": 4, "heads": 6}, r"--ulysses-degree 4 does not divide .* 6 attention heads.*"),
        ({"num_gpus": 4, "tp": 4, "heads": 6}, r"--tp-size 4 does not divide the DiT's 6 attention heads"),
        ({"num_gpus": 4, "tp": 2, "ulysses": 2, "heads": 2}, r"ulysses-degree 2 does not divide .* \(1 per TP rank\)"),
        ({"num_gpus": 0}, r"--num-gpus must be at least 1"),
        ({"num_gpus": 2, "ring": 0}, r"--ring-degree must be at least 1"),
    ],
)
def test_bad_layouts_are_refused(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        resolve_layout(**kwargs)


def test_a_ulysses_degree_that_does_not_divide_the_heads_suggests_ring():
    with pytest.raises(InvalidInputError, match=r"put the rest on ring .* --ulysses-degree 2 --ring-degree 4"):
        resolve_layout(8, ulysses=8, heads=6)


# --- bad layouts through the CLI ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags,message",
    [
        (["--num-gpus", "4", "--ulysses-degree", "2", "--ring-degree", "1"], "= 2 ranks, not --num-gpus 4"),
        (["--num-gpus", "4", "--ulysses-degree", "4"], "does not divide the DiT's 2 attention heads"),
        (["--num-gpus", "4", "--tp-size", "4"], "--tp-size 4 does not divide the DiT's 2 attention heads"),
        (["--num-gpus", "64", "--device", "cuda"], "this node is asked to run 64 GPU ranks, but"),
        (["--num-gpus", "2", "--nnodes", "2"], "--nnodes > 1 needs --dist-init-addr"),
        (["--num-gpus", "2", "--device", "cuda:1"], "--device must be auto, cuda or cpu"),
        (["--ulysses-degree", "2"], "= 2 do not divide --num-gpus 1"),  # a degree alone is not silently ignored
    ],
)
def test_cli_bad_layout_is_one_line_and_exit_2(model_paths, tmp_path, capsys, flags, message):
    target = tmp_path / "never.png"
    args = ["--model-path", model_paths["flux"], "--prompt", PROMPT, "--output-path", str(target), *flags]
    started = time.perf_counter()
    assert main(["generate", *args]) == 2
    assert time.perf_counter() - started < 10  # refused before any rank starts (a launch costs seconds)
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("easel: error: ") and message in err, err
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_serve_checks_the_layout_before_starting(model_paths, capsys):
    assert main(["serve", "--model-path", model_paths["flux"], "--num-gpus", "4", "--ulysses-degree", "4"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "--ring-degree" in err


# --- pipelines under every layout --------------------------------------------------------------------------------
def _pixels(result) -> np.ndarray:
    return result.frames if result.frames is not None else result.images


@pytest.fixture(scope="module")
def model_paths(tiny_pipeline) -> dict[str, str]:
    return {kind: str(tiny_pipeline(kind)) for kind in REQUESTS}


@pytest.fixture(scope="module")
def single(model_paths) -> dict[str, np.ndarray]:
    """Every model's output in this one process."""
    return {
        kind: _pixels(
            DiffGenerator.from_pretrained(path, progress_bar=False).generate(PROMPT, output_type="np", **REQUESTS[kind])
        )
        for kind, path in model_paths.items()
    }


def _generate_under_layouts(paths: dict[str, str], layouts: dict[str, ParallelLayout]) -> dict:
    """On every rank: each layout's output per model, or the error it raised (a model not parallel yet)."""
    results = {"rank": get_world_rank()}
    for name, layout in layouts.items():
        init_distributed(layout)  # the world stays; only its groups change
        for kind, path in paths.items():
            if kind in CFG_ONLY and layout.cfg == 1:
                continue
            try:
                generator = DiffGenerator.from_pretrained(path, progress_bar=False)
                results[name, kind] = _pixels(generator.generate(PROMPT, output_type="np", **REQUESTS[kind]))
            except Exception as error:
                results[name, kind] = f"{type(error).__name__}: {error}"
    return results


@pytest.fixture(scope="module")
def parallel(model_paths) -> dict[int, list[dict]]:
    """Every rank's results per world size, one launch each. A rank that fails alone leaves the others in a
    collective: the group timeout is short here so that such a bug fails the test instead of hanging it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EASEL_DIST_TIMEOUT_S", "60")  # the ranks inherit it when spawned
        return {
            world: run_on_ranks(_generate_under_layouts, next(iter(layouts.values())), model_paths, layouts)
            for world, layouts in LAYOUTS.items()
        }


@pytest.mark.parametrize(
    "world,layout,kind",
    [
        (world, name, kind)
        for world, layouts in LAYOUTS.items()
        for name, layout in layouts.items()
        for kind in REQUESTS
        if layout.cfg > 1 or kind not in CFG_ONLY
    ],
)
def test_pipeline_matches_one_process(single, parallel, world, layout, kind):
    outputs = [rank_results[layout, kind] for rank_results in parallel[world]]
    for rank, output in enumerate(outputs):
        assert not isinstance(output, str), f"rank {rank}: {output}"
    error = max(float(np.abs(output - single[kind]).max()) for output in outputs)
    print(f"PARALLEL PIPELINE {kind} {layout}: max abs diff {error:.2e}")
    assert outputs[0].shape == single[kind].shape
    assert error <= TOLERANCE


@pytest.mark.parametrize("kind", list(REQUESTS))
def test_another_prompt_moves_the_output(model_paths, single, kind):
    """The comparisons can fail: another prompt moves each model's output by far more than the tolerance."""
    other = DiffGenerator.from_pretrained(model_paths[kind], progress_bar=False)
    moved = np.abs(_pixels(other.generate("a blue square", output_type="np", **REQUESTS[kind])) - single[kind])
    assert moved.max() > 10 * TOLERANCE


# --- the Python API -------------------------------------------------------------------------------------------------
def test_python_api_runs_calls_on_the_ranks_and_a_killed_rank_stops_them(
    model_paths, single, tmp_path, capfd, monkeypatch
):
    """One launch: a generation equal to one process, errors as in one process, then rank 1 killed at step 2."""
    monkeypatch.setenv(FAULT_VARIABLE, f"1:2:{KILL_PROMPT}")  # read by the ranks, which inherit it when spawned
    one = DiffGenerator.from_pretrained(model_paths["flux"], progress_bar=False)
    generator = DiffGenerator.from_pretrained(model_paths["flux"], num_gpus=2, progress_bar=False)
    try:
        pids = generator.group.pids
        assert isinstance(generator, DiffGenerator) and len(pids) == 2
        assert "easel: 2 ranks as cfg 1 x ring 1 x ulysses 2 x tp 1" in capfd.readouterr().err
        steps = []
        result = generator.generate(
            PROMPT, output_type="np", step_callback=lambda *s: steps.append(s), **MODELS["flux"]
        )
        assert steps == [(1, 2), (2, 2)]
        error = float(np.abs(result.images - single["flux"]).max())
        print(f"PARALLEL PIPELINE flux python-api ulysses2: max abs diff {error:.2e}")
        assert error <= TOLERANCE
        assert generator.family.name == one.family.name and generator.sampling_defaults == one.sampling_defaults

        # An EaselError raised in the ranks comes back as the same class and message, and the ranks stay up.
        for call in (
            lambda g: g.load_lora(tmp_path / "missing.safetensors"),
            lambda g: g.generate(PROMPT, num_inference_steps=0),
        ):
            with pytest.raises(InvalidInputError) as expected:
                call(one)
            with pytest.raises(InvalidInputError) as raised:
                call(generator)
            assert type(raised.value) is type(expected.value) and str(raised.value) == str(expected.value)
        assert generator.list_loras() == []

        started = time.monotonic()
        with pytest.raises(RankGroupError, match=r"rank 1 \(pid \d+\) was killed by signal 9 while running generate"):
            generator.generate(KILL_PROMPT, **{**MODELS["flux"], "num_inference_steps": 4})
        print(f"PARALLEL KILL: rank 1 killed at step 2, caller raised after {time.monotonic() - started:.2f} s")
        assert time.monotonic() - started < 60
        assert not any(process_alive(pid) for pid in pids)
        with pytest.raises(RankGroupError, match="this parallel run has stopped"):
            generator.generate(PROMPT)
    finally:
        generator.close()


# --- easel generate writes once -------------------------------------------------------------------------------------
CLI_REQUEST = ["--prompt", PROMPT, "--height", "64", "--width", "64", "--num-inference-steps", "2", "--seed", "3"]
CLI_REQUEST += ["--negative-prompt", "blurry", "--true-cfg-scale", "4"]


@pytest.fixture(scope="module")
def single_png(model_paths, tmp_path_factory) -> np.ndarray:
    target = tmp_path_factory.mktemp("single") / "one.png"
    assert main(["generate", "--model-path", model_paths["flux"], *CLI_REQUEST, "--output-path", str(target)]) == 0
    return np.asarray(Image.open(target), dtype=np.int16)


def _only_png(folder) -> np.ndarray:
    files = list(folder.iterdir())
    assert len(files) == 1 and files[0].suffix == ".png", files
    return np.asarray(Image.open(files[0]), dtype=np.int16)


def test_cli_num_gpus_writes_the_image_once(model_paths, single_png, tmp_path, capfd):
    args = ["generate", "--model-path", model_paths["flux"], *CLI_REQUEST, "--output-path", str(tmp_path)]
    assert main([*args, "--num-gpus", "2"]) == 0
    out, err = capfd.readouterr()
    # Only --num-gpus: CFG parallel, as the request uses CFG.
    assert out.count("wrote ") == 1 and "easel: 2 ranks as cfg 2 x ring 1 x ulysses 1 x tp 1" in err
    assert np.abs(_only_png(tmp_path) - single_png).max() <= 1  # one 8-bit level for 1e-4 rounding either way


def test_cli_error_raised_in_the_ranks_is_one_line(model_paths, tmp_path, capfd):
    """A missing LoRA file is found by the ranks, not before: still one line and exit 2, nothing written."""
    missing = tmp_path / "missing.safetensors"
    args = ["generate", "--model-path", model_paths["flux"], *CLI_REQUEST, "--output-path", str(tmp_path / "out")]
    assert main([*args, "--num-gpus", "2", "--lora-path", str(missing)]) == 2
    out, err = capfd.readouterr()
    lines = err.splitlines()
    assert out == "" and lines[0].startswith("easel: 2 ranks as ") and len(lines) == 2, err
    assert lines[1].startswith("easel: error: ") and str(missing) in lines[1]
    assert not (tmp_path / "out").exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _easel(*args: str, cwd, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_two_nodes_without_torchrun_write_once(model_paths, single_png, tmp_path):
    """Two `easel generate` processes as two nodes of one GPU each: node 0 takes the request, node 1 follows."""
    address = f"127.0.0.1:{_free_port()}"
    nodes = [
        _easel(
            "-m",
            "easel",
            "generate",
            "--model-path",
            model_paths["flux"],
            *CLI_REQUEST,
            "--output-path",
            "out",
            "--num-gpus",
            "2",
            "--nnodes",
            "2",
            "--node-rank",
            str(node),
            "--dist-init-addr",
            address,
            cwd=tmp_path,
        )  # fmt: skip
        for node in (0, 1)
    ]
    (out0, err0), (out1, err1) = (node.communicate(timeout=240) for node in nodes)
    assert [node.returncode for node in nodes] == [0, 0], err0 + err1
    assert out0.count("wrote ") == 1 and out1 == "", out1
    assert np.abs(_only_png(tmp_path / "out") - single_png).max() <= 1


def test_torchrun_ranks_write_once(model_paths, single_png, tmp_path):
    """`torchrun --nproc-per-node 2 -m easel generate ...`: each process is one rank; global rank 0 writes."""
    run = _easel(
        "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "easel", "generate", "--model-path", model_paths["flux"], *CLI_REQUEST, "--output-path", "out",
        cwd=tmp_path,
    )  # fmt: skip
    out, err = run.communicate(timeout=240)
    assert run.returncode == 0, err
    assert out.count("wrote ") == 1 and err.count("easel: 2 ranks as cfg 2 x ring 1 x ulysses 1 x tp 1") == 1
    assert np.abs(_only_png(tmp_path / "out") - single_png).max() <= 1
