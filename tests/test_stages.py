"""Stage contracts: a stage that needs, or should set, a batch field that is unset fails naming the field."""

import pytest

from easel import DiffGenerator
from easel.errors import StageVerificationError
from easel.runtime.pipelines_core.schedule_batch import Req
from easel.runtime.pipelines_core.stages import DenoisingStage, LatentPreparationStage


class ForgetfulLatentStage(LatentPreparationStage):
    """Draws no noise: what a buggy pre-processing stage would do."""

    def forward(self, batch, server_args):
        return batch


@pytest.fixture
def generator(tiny_pipeline):
    return DiffGenerator.from_pretrained(tiny_pipeline("flux"), progress_bar=False)


def test_stage_that_leaves_its_output_unset_names_the_field(generator):
    stages = generator.pipeline.stages
    index = next(i for i, stage in enumerate(stages) if isinstance(stage, LatentPreparationStage))
    stages[index] = ForgetfulLatentStage()
    with pytest.raises(StageVerificationError, match="ForgetfulLatentStage left batch field.*latents"):
        generator.generate("a cat", height=32, width=32, num_inference_steps=1)


def test_stage_given_a_batch_without_its_inputs_names_them(generator):
    denoise = next(stage for stage in generator.pipeline.stages if isinstance(stage, DenoisingStage))
    with pytest.raises(StageVerificationError, match="DenoisingStage needs batch field.*latents.*timesteps"):
        denoise(Req(prompt=["a cat"]), generator.server_args)


def test_cfg_needs_negative_embeddings(generator):
    denoise = next(stage for stage in generator.pipeline.stages if isinstance(stage, DenoisingStage))
    batch = Req(prompt=["a cat"], do_classifier_free_guidance=True)
    assert "negative_prompt_embeds" in denoise.verify_input(batch, generator.server_args)


def test_every_stage_is_timed(generator):
    result = generator.generate("a cat", height=32, width=32, num_inference_steps=1)
    assert [name for name in result.timings if name != "total"] == [s.name for s in generator.pipeline.stages]
    assert all(seconds >= 0 for seconds in result.timings.values())
