"""`easel serve` in a subprocess for the server tests: started on 127.0.0.1 (any free port), driven over HTTP, and
stopped with its worker afterwards, so that no process outlives the tests."""

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import openai

READY_LINE = re.compile(r"^easel: serving (\S+) on (http://\S+)$")
START_TIMEOUT_S = 90  # the worker imports torch and loads the model; the machine may be busy


class ServerProcess:
    """One `python -m easel serve` and what it printed."""

    def __init__(self, model_path, *args: str, env: dict[str, str] | None = None):
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "easel", "serve", "--model-path", str(model_path), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            # One torch thread, as conftest pins it: two threads on a busy 2-core machine stall each other.
            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
            start_new_session=True,  # its own process group: the server and its worker, stopped together
        )
        self.stdout_lines: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self.model_name, self.url = self._wait_ready()
        self.worker_pids = {self.health().json()["worker_pid"]}

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            self.stdout_lines.append(line.rstrip("\n"))

    def _wait_ready(self) -> tuple[str, str]:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            for line in self.stdout_lines:
                if match := READY_LINE.match(line):
                    return match.group(1), match.group(2)
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"easel serve did not get ready; it wrote:\n{self.stderr_text()}")

    def stderr_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()

    def health(self) -> httpx.Response:
        return httpx.get(f"{self.url}/health", timeout=10)

    def http(self, **kwargs) -> httpx.Client:
        """A raw HTTP client, with a timeout that a generation fits in."""
        return httpx.Client(base_url=self.url, timeout=120, **kwargs)

    def client(self, api_key: str = "unused", **kwargs) -> openai.OpenAI:
        """The official client, without retries: every answer a test sees is the server's first."""
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=120, **kwargs)

    def wait_health(self, predicate, timeout: float = 60) -> dict:
        """Polls /health until `predicate(body)` holds; returns the body."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.health().json()
            if predicate(body):
                self.worker_pids.add(body["worker_pid"])
                return body
            time.sleep(0.1)
        raise AssertionError(f"/health never satisfied the condition; last: {body}")

    def stop(self) -> None:
        """SIGTERM to the process group (the server stops its worker), then SIGKILL for anything left."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                raise AssertionError("easel serve did not stop on SIGTERM") from None
        for pid in self.worker_pids - {None}:
            if _alive(pid):  # not expected: reported so that a leak is seen, and cleaned up
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"worker {pid} outlived its server")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped by its parent (init, once the server is gone).
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def error_of(response: httpx.Response) -> dict:
    """The OpenAI-shaped error of a response, checked to have that shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"], body
    return body["error"]


def process_alive(pid: int) -> bool:
    """True while process `pid` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def start_long_request(client: openai.OpenAI) -> tuple[threading.Thread, dict]:
    """A generation that runs far longer than any test waits (1000 steps at 512x512), in a thread; the dict gets
    the APIStatusError it ends with under "error"."""
    outcome: dict = {}

    def long_request() -> None:
        try:
            client.images.generate(prompt="a long one", size="512x512", extra_body={"num_inference_steps": 1000})
        except openai.APIStatusError as error:
            outcome["error"] = error

    thread = threading.Thread(target=long_request)
    thread.start()
    return thread, outcome
