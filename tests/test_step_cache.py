"""Step caching: the spec grammar, the exact path kept bit for bit when nothing may be skipped (every DiT), real skips
within a stated PSNR on the demo model, per-branch and per-expert state, no state shared between requests, and the
same cached output under sequence and CFG parallelism as in one process."""

import numpy as np
import pytest
import torch

from easel import DiffGenerator
from easel.demo import DEMO_MODEL_PATH
from easel.demo.scenes import evaluation_prompts
from easel.errors import InvalidInputError
from easel.quality import psnr
from easel.runtime.cache.spec import GRAMMAR, CacheSpec, parse_cache_spec
from easel.runtime.cache.step_cache import ResidualEstimate
from easel.runtime.distributed import ParallelLayout, init_distributed
from easel.runtime.distributed.launch import run_on_ranks

# Specs that can skip nothing: every step computes, so the output must equal the exact path's bit for bit.
NEVER_SKIP = ("dbcache:threshold=0", "dbcache:fn=1,bn=1,threshold=0", "teacache:threshold=0", "steps:every=1")
# kind -> a small request with CFG (two branches) where the family has it.
REQUESTS = {
    "flux": {"height": 64, "width": 64, "negative_prompt": "blurry", "true_cfg_scale": 4.0},
    "sd3": {"height": 48, "width": 80, "guidance_scale": 4.5},
    "z-image": {"height": 48, "width": 80, "guidance_scale": 4.0},
    "qwen-image": {"height": 64, "width": 64, "negative_prompt": "blurry", "true_cfg_scale": 4.0},
    "wan-t2v": {"height": 48, "width": 80, "num_frames": 5, "guidance_scale": 5.0, "negative_prompt": "blurry"},
    "wan2.2-a14b": {"height": 48, "width": 80, "num_frames": 5, "guidance_scale": 5.0, "guidance_scale_2": 3.0},
}
STEPS = 6
PROMPT = "a red circle on the left"
# The demo model at its defaults (64x64, 20 steps, true CFG 3): the mean PSNR each preset keeps at least, in dB.
DEMO_MIN_PSNR = {"quality": 38.0, "balanced": 33.0, "fast": 30.0}


def _pixels(result) -> np.ndarray:
    return result.frames if result.frames is not None else result.images


# --- the spec --------------------------------------------------------------------------------------------------------
def test_specs_parse_and_print_back():
    spec = parse_cache_spec("dbcache:fn=2,bn=1,threshold=0.2,warmup=3,max_cached=5,max_continuous=2,taylorseer=1")
    assert (spec.method, spec.fn, spec.bn, spec.threshold, spec.warmup) == ("dbcache", 2, 1, 0.2, 3)
    assert (spec.max_cached, spec.max_continuous, spec.taylorseer, spec.order) == (5, 2, True, 1)
    assert parse_cache_spec(str(spec)) == spec
    assert parse_cache_spec("steps:compute=0/1/4/2").compute == (0, 1, 2, 4)
    assert not parse_cache_spec(None).enabled and not parse_cache_spec("none").enabled
    for preset in ("fast", "balanced", "quality"):
        assert parse_cache_spec(preset).enabled
    assert parse_cache_spec(CacheSpec("teacache", threshold=0.4)).threshold == 0.4


@pytest.mark.parametrize(
    "text,problem",
    [
        ("bogus", "unknown cache method 'bogus'"),
        ("teacache:fn=1", "teacache takes no key 'fn'"),
        ("dbcache:threshold", "'threshold' is not key=value"),
        ("dbcache:threshold=abc", "threshold='abc' is not a valid value"),
        ("dbcache:threshold=1.5", "dbcache threshold must lie in 0.0..1.0"),
        ("teacache:threshold=-1", "teacache threshold must lie in 0.0..2.0"),
        ("dbcache:fn=0", "dbcache needs fn >= 1"),
        ("dbcache:taylorseer=2", "taylorseer='2' is not a valid value"),
        ("dbcache:order=3", "order must be 1 or 2"),
        ("dbcache:warmup=-2", "warmup must be 0 or more"),
        ("steps", "steps takes either compute=I/J/... or every=K"),
        ("steps:every=0", "every must be 1 or more"),
    ],
)
def test_bad_specs_name_the_problem_and_list_the_grammar(text, problem):
    with pytest.raises(InvalidInputError) as raised:
        parse_cache_spec(text)
    assert problem in str(raised.value) and GRAMMAR in str(raised.value)


def test_taylor_expansion_is_exact_on_polynomials_of_its_order():
    for order, residual in [(0, lambda s: torch.tensor(3.0)), (1, lambda s: 2.0 * s + 1), (2, lambda s: s * s - s)]:
        estimate = ResidualEstimate(order)
        for step in (0, 1, 2, 4):
            estimate.update(step, [residual(torch.tensor(float(step)))])
        if order == 2:  # divided differences over uneven spacing estimate the second derivative only roughly
            assert torch.allclose(estimate.predict(5)[0], residual(torch.tensor(5.0)), atol=2.5)
        else:
            assert torch.allclose(estimate.predict(7)[0], residual(torch.tensor(7.0)))


# --- every DiT -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def generators(tiny_pipeline) -> dict[str, DiffGenerator]:
    return {kind: DiffGenerator.from_pretrained(tiny_pipeline(kind), progress_bar=False) for kind in REQUESTS}


@pytest.mark.parametrize("kind", list(REQUESTS))
def test_a_cache_that_may_skip_nothing_is_the_exact_path(generators, kind):
    generator = generators[kind]
    exact = _pixels(generator.generate(PROMPT, output_type="np", num_inference_steps=STEPS, **REQUESTS[kind]))
    for spec in NEVER_SKIP:
        result = generator.generate(PROMPT, output_type="np", num_inference_steps=STEPS, cache=spec, **REQUESTS[kind])
        assert np.array_equal(_pixels(result), exact), spec
        assert all(branch["skipped"] == 0 for branch in result.cache["branches"].values())


@pytest.mark.parametrize("kind", list(REQUESTS))
def test_every_dit_skips_and_the_output_moves(generators, kind):
    generator = generators[kind]
    exact = _pixels(generator.generate(PROMPT, output_type="np", num_inference_steps=STEPS, **REQUESTS[kind]))
    result = generator.generate(
        PROMPT, output_type="np", num_inference_steps=STEPS, cache="steps:compute=0/1/3", **REQUESTS[kind]
    )
    branches = result.cache["branches"]
    expected = (
        {"cond", "uncond"} if kind != "wan2.2-a14b" else {f"expert{e}/{b}" for e in (0, 1) for b in ("cond", "uncond")}
    )
    assert set(branches) == expected
    assert sum(branch["skipped"] for branch in branches.values()) > 0
    assert np.abs(_pixels(result) - exact).max() > 1e-3


def test_each_expert_of_wan22_keeps_its_own_branches(generators):
    result = generators["wan2.2-a14b"].generate(
        PROMPT, output_type="np", num_inference_steps=STEPS, cache="steps:every=2,warmup=1", **REQUESTS["wan2.2-a14b"]
    )
    branches = result.cache["branches"]
    # Each expert's first step computes (it has nothing of its own to reuse), whatever the mask says.
    for expert in (0, 1):
        assert branches[f"expert{expert}/cond"]["computed"] >= 1
    assert sum(b["computed"] + b["skipped"] for b in branches.values()) == 2 * STEPS


def test_too_many_kept_blocks_and_steps_past_the_end_are_refused(generators):
    flux = generators["flux"]
    with pytest.raises(InvalidInputError, match="fn=7 \\+ bn=3 blocks exceed the"):
        flux.generate(PROMPT, num_inference_steps=2, cache="dbcache:fn=7,bn=3", **REQUESTS["flux"])
    with pytest.raises(InvalidInputError, match="compute lists step 9, but the request has 2 steps"):
        flux.generate(PROMPT, num_inference_steps=2, cache="steps:compute=0/9", **REQUESTS["flux"])


# --- the demo model --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo() -> DiffGenerator:
    return DiffGenerator.from_pretrained(DEMO_MODEL_PATH, progress_bar=False)


@pytest.mark.parametrize("preset", list(DEMO_MIN_PSNR))
def test_presets_skip_within_their_psnr_on_the_demo_model(demo, preset):
    prompts = evaluation_prompts(held_out=False, count=2) + evaluation_prompts(held_out=True, count=2)
    values = []
    for seed, prompt in enumerate(prompts):
        exact = demo.generate(prompt, seed=seed, output_type="np").images
        result = demo.generate(prompt, seed=seed, output_type="np", cache=preset)
        skipped = {name: branch["skipped"] for name, branch in result.cache["branches"].items()}
        assert set(skipped) == {"cond", "uncond"} and all(count > 0 for count in skipped.values()), skipped
        values.append(psnr(result.images, exact))
    print(f"PRESET {preset}: PSNR per prompt {[round(v, 1) for v in values]}")
    assert np.mean(values) >= DEMO_MIN_PSNR[preset]


def test_requests_share_no_cache_state(demo, tiny_pipeline):
    first, second = "a red circle at the top left", "a blue square at the bottom right"
    alone = {p: DiffGenerator.from_pretrained(DEMO_MODEL_PATH, progress_bar=False) for p in (first, second)}
    expected = {p: g.generate(p, seed=3, output_type="np", cache="fast").images for p, g in alone.items()}
    for prompt in (first, second, first):
        assert np.array_equal(demo.generate(prompt, seed=3, output_type="np", cache="fast").images, expected[prompt])


def test_the_quality_check_reports_on_the_request(demo):
    result = demo.generate("a green triangle at the centre", seed=1, cache="fast", quality_check=True)
    report = result.quality
    assert 20 < report.psnr_db < float("inf") and 0 < report.ssim < 1 and report.max_abs_diff > 0
    assert report.seconds > 0 and report.exact_seconds > 0 and report.checker is not None
    exact = demo.generate("a green triangle at the centre", seed=1, quality_check=True).quality
    assert exact.psnr_db == float("inf") and exact.max_abs_diff == 0


def test_the_server_default_applies_when_a_request_gives_none(tiny_pipeline):
    cached = DiffGenerator.from_pretrained(tiny_pipeline("flux"), cache="steps:compute=0/2", progress_bar=False)
    request = dict(num_inference_steps=4, output_type="np", **REQUESTS["flux"])
    assert cached.generate(PROMPT, **request).cache["branches"]["cond"] == {"computed": 2, "skipped": 2}
    assert cached.generate(PROMPT, cache="none", **request).cache is None


# --- parallel runs ---------------------------------------------------------------------------------------------------
PARALLEL_SPECS = ("dbcache:threshold=1,warmup=1", "teacache:threshold=0.6", "dbcache:threshold=1,warmup=1,taylorseer=1")
# 48x80 FLUX makes 15 image tokens, and Wan's 48x80 frames 45 per frame group: both pad on two ranks.
PARALLEL_KINDS = {"flux": {**REQUESTS["flux"], "height": 48, "width": 80}, "wan-t2v": REQUESTS["wan-t2v"]}


def _cached_under_layouts(paths: dict[str, str], layouts: dict[str, ParallelLayout]) -> dict:
    results = {}
    for name, layout in layouts.items():
        init_distributed(layout)
        for kind, path in paths.items():
            generator = DiffGenerator.from_pretrained(path, progress_bar=False)
            for spec in PARALLEL_SPECS:
                result = generator.generate(
                    PROMPT, output_type="np", num_inference_steps=STEPS, cache=spec, **PARALLEL_KINDS[kind]
                )
                results[name, kind, spec] = (_pixels(result), result.cache["branches"])
    return results


def test_cached_output_under_ulysses_and_cfg_parallel_equals_one_process(tiny_pipeline, monkeypatch):
    paths = {kind: str(tiny_pipeline(kind)) for kind in PARALLEL_KINDS}
    layouts = {"ulysses2": ParallelLayout(ulysses=2), "cfg2": ParallelLayout(cfg=2)}
    monkeypatch.setenv("EASEL_DIST_TIMEOUT_S", "60")
    ranks = run_on_ranks(_cached_under_layouts, layouts["ulysses2"], paths, layouts)
    for kind, path in paths.items():
        single = DiffGenerator.from_pretrained(path, progress_bar=False)
        for spec in PARALLEL_SPECS:
            one = single.generate(
                PROMPT, output_type="np", num_inference_steps=STEPS, cache=spec, **PARALLEL_KINDS[kind]
            )
            assert sum(b["skipped"] for b in one.cache["branches"].values()) > 0, spec
            for name in layouts:
                for rank, results in enumerate(ranks):
                    pixels, branches = results[name, kind, spec]
                    assert branches == one.cache["branches"], (name, kind, spec, rank)
                    assert np.abs(pixels - _pixels(one)).max() <= 1e-4, (name, kind, spec, rank)
