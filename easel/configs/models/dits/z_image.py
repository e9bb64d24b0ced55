"""The Z-Image DiT config: the fields of Diffusers' `ZImageTransformer2DModel` with its defaults.

Z-Image-Turbo and Z-Image share the architecture (6 B parameters: 30 layers of width 3840, 2 refiner layers per
stream, Qwen3-4B caption features of width 2560); their `config.json` sets `axes_lens` to (1536, 512, 512).
"""

import dataclasses

from easel.configs.models.dits.base import DiTConfig


@dataclasses.dataclass
class ZImageDitConfig(DiTConfig):
    """Architecture of the Z-Image single-stream transformer (field names as in its `config.json`)."""

    # Patchifications the checkpoint has weights for, as (spatial, temporal) pairs: one x embedder and one final
    # layer per pair, keyed "{patch}-{f_patch}". Text-to-image uses (2, 1).
    all_patch_size: tuple[int, ...] = (2,)
    all_f_patch_size: tuple[int, ...] = (1,)
    in_channels: int = 16
    dim: int = 3840
    n_layers: int = 30
    n_refiner_layers: int = 2
    n_heads: int = 30
    # Unused by the model (every attention has n_heads key/value heads), kept so config.json round-trips.
    n_kv_heads: int = 30
    norm_eps: float = 1e-5
    qk_norm: bool = True
    cap_feat_dim: int = 2560
    # Set only by the Omni variant (SigLIP image features); its extra weights are loaded but unused here.
    siglip_feat_dim: int | None = None
    rope_theta: float = 256.0
    t_scale: float = 1000.0
    axes_dims: tuple[int, ...] = (32, 48, 48)
    # The sizes of Diffusers' precomputed rotary tables, i.e. the largest position + 1 per axis it accepts.
    axes_lens: tuple[int, ...] = (1024, 512, 512)

    @property
    def attention_heads(self) -> int:
        return self.n_heads

    def __post_init__(self) -> None:
        # config.json holds lists; tuples keep the config hashable and comparable.
        for name in ("all_patch_size", "all_f_patch_size", "axes_dims", "axes_lens"):
            setattr(self, name, tuple(getattr(self, name)))
