"""Shared fixtures: tiny random-weight pipelines, built once per test session into a temporary folder, and an HTTP
client on a module's server."""

import os

import torch

# Triton's interpreter runs its kernels on CPU tensors (tests/test_triton_kernels.py, --kernel-backend triton); Triton
# reads this when it is first imported, which easel.testing's imports already do.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from easel.testing import build_tiny_pipeline  # noqa: E402

# Outputs move in the low bits with the thread count; pin it so that every comparison runs alike.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """`tiny_pipeline(kind)` -> the folder of that tiny pipeline, built on first use."""
    built = {}

    def get(kind: str):
        if kind not in built:
            built[kind] = build_tiny_pipeline(kind, tmp_path_factory.mktemp(kind) / kind)
        return built[kind]

    return get


def pytest_generate_tests(metafunc):
    """A test class's `cases` list parametrizes its tests that take a `case` (see tests/parity.py)."""
    if "case" in metafunc.fixturenames and metafunc.cls is not None:
        cases = metafunc.cls.cases
        ids = [",".join(_describe(key, value) for key, value in case.items()) for case in cases]
        metafunc.parametrize("case", cases, ids=ids)


def _describe(key: str, value) -> str:
    return f"{key}={value}" if isinstance(value, str | int | float) else key


@pytest.fixture(scope="module")
def http(server):
    """An HTTP client on the `server` fixture of the module that asks for it (tests/server_fixtures.py)."""
    with server.http() as http:
        yield http
