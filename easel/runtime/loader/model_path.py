"""Where a model lives: a local Diffusers folder, or a Hugging Face id found in (or fetched into) the HF cache."""

import re
from pathlib import Path

from easel.errors import ModelLoadError

HF_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def resolve_model_path(model_path: str) -> tuple[Path, str | None]:
    """The local folder holding `model_index.json`, and the model's Hugging Face id where one is known."""
    path = Path(model_path).expanduser()
    if path.exists():
        return _checked_folder(path), _hf_id_of(path)
    if not HF_ID.match(model_path):
        raise ModelLoadError(f"model path {model_path} does not exist")
    return _checked_folder(Path(_from_hub(model_path))), model_path


def _hf_id_of(folder: Path) -> str | None:
    """The Hugging Face id of a folder in the HF cache (…/models--org--name/snapshots/<rev>), if it is one."""
    for part in folder.resolve().parts:
        if part.startswith("models--"):
            return part.removeprefix("models--").replace("--", "/", 1)
    return None


def _from_hub(repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:
        pass  # not cached: try the network
    try:
        return snapshot_download(repo_id)
    except Exception as error:
        raise ModelLoadError(
            f"{repo_id} is neither a local folder nor in the Hugging Face cache, and downloading it failed "
            f"({type(error).__name__}). Download it where a network is available, e.g. "
            f"`huggingface-cli download {repo_id} --local-dir ./{repo_id.split('/')[-1]}`, "
            f"copy the folder here and pass --model-path ./{repo_id.split('/')[-1]}"
        ) from None


def _checked_folder(path: Path) -> Path:
    if not path.is_dir():
        raise ModelLoadError(f"model path {path} is not a folder; pass a Diffusers-format model folder")
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(
            f"{path} has no model_index.json: it is not a Diffusers-format pipeline folder "
            "(one with model_index.json and a subfolder per component)"
        )
    return path
