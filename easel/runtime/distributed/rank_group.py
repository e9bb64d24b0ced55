"""A parallel run driven from one process: this node's ranks as child processes, and a client that sends them calls.

The parent (a Python program, `easel generate`, the server's worker) starts the local ranks (spawn); each joins the
world, loads the pipeline and says it is ready. Every call goes to global rank 0, which broadcasts it to the other
ranks; all run it in the same order, and rank 0 answers (and writes any output files). The broadcast runs on a
control group of its own, gloo with no practical timeout, because idle ranks wait in it between calls; the groups
the model computes on keep init_distributed's short timeout.

Failures, and why each is handled so:
- an EaselError in a call (bad input, a missing LoRA file) is raised alike on every rank before any collective, so
  the ranks stay in step: rank 0 sends it back and the caller gets the same class and message;
- any other error may leave the ranks at different collectives, so the run stops: the rank sends its error and
  exits, and the parent stops the others and raises that error;
- a rank that dies (killed, crashed) is seen at once, as the parent waits on every rank's liveness as well as on
  rank 0's answer: it stops the others and raises RankGroupError naming the rank. Ranks also exit when their parent
  dies (they watch it), so none outlives a killed parent.
"""

import contextlib
import dataclasses
import datetime
import logging
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from easel.errors import EaselError, InvalidInputError
from easel.runtime.distributed.layout import asks_parallel, describe, layout_options, plan_layout, rank_devices
from easel.runtime.distributed.parallel_state import (
    ParallelLayout,
    destroy_distributed,
    init_distributed,
    is_output_rank,
)
from easel.runtime.entrypoints.diff_generator import DiffGenerator, GenerationResult
from easel.runtime.server_args import ServerArgs

IDLE_TIMEOUT = datetime.timedelta(days=3650)  # idle ranks wait in the control group for as long as it takes
STOP_TIMEOUT_S = 10  # how long ranks get to leave the world on close before they are killed
GRACE_S = 2  # after one rank fails, how long the others get to fail too (and say why) before they are killed
# Tests kill a rank on purpose: "RANK:STEP" (or "RANK:STEP:PROMPT", for that prompt only) makes global rank RANK kill
# itself with SIGKILL after denoising step STEP.
FAULT_VARIABLE = "EASEL_RANK_FAULT"


class RankGroupError(EaselError):
    """A rank of a parallel run died, or the run has stopped: its ranks are gone."""


@dataclasses.dataclass(frozen=True)
class _RankSpec:
    """What every rank of this node is started with."""

    model_path: str
    options: dict[str, Any]  # `DiffGenerator.from_pretrained` keyword arguments
    layout: ParallelLayout
    init_method: str
    node_rank: int
    local_ranks: int
    devices: tuple[str, ...]
    parent_pid: int


# --- in a rank --------------------------------------------------------------------------------------------------
def _rank_main(spec: _RankSpec, local_rank: int, calls: Connection | None, answers: Connection) -> None:
    # Ctrl-C reaches the whole process group: the parent decides when ranks stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(spec.parent_pid)
    rank = spec.node_rank * spec.local_ranks + local_rank
    device = spec.devices[local_rank]
    options = {**spec.options, "device": device, "progress_bar": spec.options.get("progress_bar", True) and rank == 0}
    logging.basicConfig(level=options.get("log_level", "warning").upper(), format="%(levelname)s %(name)s: %(message)s")
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:  # the node's cores shared out, not each rank taking them all
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.local_ranks))
    try:
        backend = "nccl" if device.startswith("cuda") else "gloo"
        init_distributed(spec.layout, rank=rank, init_method=spec.init_method, backend=backend)
        control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
        generator = DiffGenerator.from_pretrained(spec.model_path, **options)
    except BaseException as error:
        _fail(answers, rank, "loading the model", error)
    family = dataclasses.replace(generator.family, model_detectors=())  # its detectors are lambdas: not picklable
    _send(answers, ("ready", (family, generator.server_args, generator.sampling_defaults) if rank == 0 else None))
    while True:
        try:
            call = _next_call(calls) if rank == 0 else None
            box = [call]
            dist.broadcast_object_list(box, src=0, group=control)
            call = box[0]
        except BaseException as error:  # a peer died between calls
            _fail(answers, rank, "waiting for a call", error)
        if call[0] == "stop":
            break
        _, method, kwargs = call
        try:
            if method == "generate":
                kwargs = {**kwargs, "step_callback": _step_callback(rank, kwargs.get("prompt"), answers)}
            result = getattr(generator, method)(**kwargs)
        except EaselError as error:
            if rank == 0:
                _send(answers, ("error", _portable(error), False))
            continue
        except BaseException as error:
            _fail(answers, rank, f"running {method}", error)
        if rank == 0:
            _send(answers, ("result", result))
    destroy_distributed()


def _next_call(calls: Connection) -> tuple:
    try:
        return _receive(calls)
    except (EOFError, OSError):  # the parent is gone
        return ("stop",)


def _fail(answers: Connection, rank: int, doing: str, error: BaseException) -> NoReturn:
    """Reports an error that stops the run, and leaves at once: the world may be out of step, so no clean exit.
    The rank's traceback travels as a note on the error, which the parent raises (printed if nobody catches it)."""
    if not isinstance(error, EaselError):
        error.add_note(f"rank {rank}, while {doing}:\n" + "".join(traceback.format_tb(error.__traceback__)).rstrip())
    with contextlib.suppress(OSError):
        _send(answers, ("error", _portable(error), True))
    sys.stderr.flush()
    os._exit(1)


def _step_callback(rank: int, prompt: Any, answers: Connection) -> Callable[[int, int], None]:
    """Rank 0 reports each step to the parent; FAULT_VARIABLE may make this rank die at one."""
    fault_rank, _, rest = os.environ.get(FAULT_VARIABLE, "").partition(":")
    fault_step, _, fault_prompt = rest.partition(":")
    dies_at = int(fault_step) if fault_rank == str(rank) and (not fault_prompt or fault_prompt == prompt) else None

    def on_step(step: int, total: int) -> None:
        if step == dies_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if rank == 0:
            _send(answers, ("progress", step, total))

    return on_step


def _exit_with_parent(parent_pid: int) -> None:
    """Exits this rank once its parent is gone, even mid-generation, so that no rank outlives a killed parent."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="easel-parent-watch", daemon=True).start()


# Plain pickle, not multiprocessing's: tensors are copied, not shared through torch's file-descriptor passing.
def _send(connection: Connection, message: tuple) -> None:
    connection.send_bytes(pickle.dumps(message))


def _receive(connection: Connection) -> tuple:
    return pickle.loads(connection.recv_bytes())


def _portable(error: BaseException) -> BaseException:
    """The error itself when it survives pickling (same class and message for the caller), else its text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RankGroupError(f"{type(error).__name__}: {error}")


# --- in the parent ----------------------------------------------------------------------------------------------
class RankGroup:
    """This node's ranks of one parallel run, and the pipes to them."""

    def __init__(self, server_args: ServerArgs, options: dict[str, Any], layout: ParallelLayout):
        local_ranks = layout.world_size // server_args.nnodes
        devices = tuple(rank_devices(local_ranks, server_args.device))
        self.node_rank = server_args.node_rank
        scratch = None
        if server_args.dist_init_addr is not None:
            init_method = f"tcp://{server_args.dist_init_addr}"
        else:  # one node: a file rendezvous needs no free port
            scratch = tempfile.mkdtemp(prefix="easel-ranks-")
            init_method = f"file://{os.path.join(scratch, 'rendezvous')}"
        spec = _RankSpec(
            server_args.model_path, options, layout, init_method, self.node_rank, local_ranks, devices, os.getpid()
        )
        context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch threads or CUDA state
        self.processes: list = []
        self._answers: list[Connection | None] = []
        self._calls: Connection | None = None
        with _may_have_children():
            for local_rank in range(local_ranks):
                answers_reader, answers_writer = context.Pipe(duplex=False)
                calls_reader = None
                if self.node_rank == 0 and local_rank == 0:
                    calls_reader, self._calls = context.Pipe(duplex=False)
                process = context.Process(
                    target=_rank_main,
                    args=(spec, local_rank, calls_reader, answers_writer),
                    name=f"easel-rank-{self.node_rank * local_ranks + local_rank}",
                    daemon=True,
                )
                process.start()
                # Only the rank holds these ends now, so that its death reads as the end of its pipe.
                answers_writer.close()
                if calls_reader is not None:
                    calls_reader.close()
                self.processes.append(process)
                self._answers.append(answers_reader)
        self._lock = threading.Lock()
        self._stopped: str | None = None  # why the run stopped, once it has
        self._finalizer = weakref.finalize(self, _shutdown, self.processes, self._calls, scratch)
        self.info = None  # rank 0's (family, server_args, sampling defaults); None on other nodes
        waiting = set(range(local_ranks))
        while waiting:
            local_rank, message = self._next_message("loading the model")
            if message[0] == "ready":
                waiting.discard(local_rank)
                self.info = message[1] if message[1] is not None else self.info

    @property
    def stopped(self) -> str | None:
        return self._stopped

    @property
    def pids(self) -> list[int]:
        """The process ids of this node's ranks, in rank order."""
        return [process.pid for process in self.processes]

    def call(self, method: str, on_progress: Callable[[int, int], None] | None = None, **kwargs: Any) -> Any:
        """Runs `DiffGenerator.<method>(**kwargs)` on every rank; rank 0's result. on_progress hears each step."""
        if self._calls is None:
            raise InvalidInputError(f"node {self.node_rank} follows node 0 in this run: make calls on node 0")
        with self._lock:
            if self._stopped:
                raise RankGroupError(f"this parallel run has stopped ({self._stopped}): load the model again")
            try:
                _send(self._calls, ("call", method, kwargs))
            except OSError:
                pass  # rank 0 is dying: the wait below says how
            try:
                return self._answer(method, on_progress)
            except KeyboardInterrupt:  # the ranks are mid-call, deaf to a stop: kill them now rather than later
                self._stopped = f"interrupted while running {method}"
                for process in self.processes:
                    process.kill()
                self._finalizer()
                raise

    def _answer(self, method: str, on_progress: Callable[[int, int], None] | None) -> Any:
        """Rank 0's answer to the call just sent, passing its progress on."""
        callback_error = None
        while True:
            _, message = self._next_message(f"running {method}")
            if message[0] == "progress" and on_progress is not None and callback_error is None:
                try:
                    on_progress(*message[1:])
                except Exception as error:  # the ranks run on: raised once they are done
                    callback_error = error
            elif message[0] == "result":
                if callback_error is not None:
                    raise callback_error
                return message[1]
            elif message[0] == "error":
                raise message[1]

    def wait(self) -> None:
        """Blocks until this node's ranks have left the run (another node's parent closed it)."""
        # One look at who is alive per round: a rank that exits between two looks would leave wait() an empty
        # list, which blocks forever; a listed rank that exits makes its sentinel ready.
        while alive := [process for process in self.processes if process.is_alive()]:
            wait([process.sentinel for process in alive])
        if failed := [i for i, process in enumerate(self.processes) if process.exitcode]:
            raise RankGroupError(f"{self._describe_exit(failed[0])}; the parallel run has stopped")

    def close(self) -> None:
        """Stops the ranks (killing those that do not leave in time); idempotent."""
        self._stopped = self._stopped or "closed"
        self._finalizer()

    def _next_message(self, doing: str) -> tuple[int, tuple]:
        """The next message of any local rank, as (local rank, message). A failure that stops the run is raised
        here, after stopping every rank: a rank's own error, or RankGroupError naming a rank that died."""
        while True:
            readable = [answers for answers in self._answers if answers is not None]
            ready = wait(readable + [process.sentinel for process in self.processes])
            for local_rank, answers in enumerate(self._answers):
                if answers in ready:
                    try:
                        message = _receive(answers)
                    except (EOFError, OSError):
                        self._answers[local_rank] = None
                        continue
                    if message[0] == "error" and message[2]:
                        self._stop_after_failure(doing, [(local_rank, message[1])])
                    return local_rank, message
            if any(not process.is_alive() for process in self.processes):
                self._stop_after_failure(doing, [])

    def _stop_after_failure(self, doing: str, errors: list[tuple[int, BaseException]]) -> NoReturn:
        """Gives the other ranks a moment to fail too (and say why), stops them all, and raises the cause: a rank
        that died without a word (killed, crashed), else the first error a rank sent."""
        deadline = time.monotonic() + GRACE_S
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for local_rank, answers in enumerate(self._answers):
            while answers is not None and answers.poll(0):
                try:
                    message = _receive(answers)
                except (EOFError, OSError):
                    break
                if message[0] == "error":
                    errors.append((local_rank, message[1]))
        speakers = {local_rank for local_rank, _ in errors}
        dead = [i for i, process in enumerate(self.processes) if not process.is_alive()]
        silent = [i for i in dead if i not in speakers and self.processes[i].exitcode != 0]
        self._finalizer()
        if silent or not errors:
            culprit = silent[0] if silent else (dead or [0])[0]
            self._stopped = f"{self._describe_exit(culprit)} while {doing}"
            raise RankGroupError(f"{self._stopped}; the other ranks were stopped")
        local_rank, error = errors[0]
        self._stopped = f"rank {self._global(local_rank)} failed while {doing}: {type(error).__name__}: {error}"
        error.add_note(f"(raised in rank {self._global(local_rank)} of a parallel run, which has stopped)")
        raise error

    def _global(self, local_rank: int) -> int:
        return self.node_rank * len(self.processes) + local_rank

    def _describe_exit(self, local_rank: int) -> str:
        process = self.processes[local_rank]
        code = process.exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        return f"rank {self._global(local_rank)} (pid {process.pid}) {how}"


def _shutdown(processes: list, calls: Connection | None, scratch: str | None) -> None:
    """Asks the ranks to leave (rank 0 broadcasts the stop), waits a while, then kills what is left."""
    if calls is not None:
        with contextlib.suppress(OSError):
            _send(calls, ("stop",))
        calls.close()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def _may_have_children():
    """multiprocessing refuses children to a daemonic process, as the server's worker is; ranks watch their parent
    themselves, so they may be started from one."""
    process = multiprocessing.current_process()
    daemonic = process.daemon
    if daemonic:
        process.daemon = False
    try:
        yield
    finally:
        if daemonic:
            process.daemon = True


class ParallelGenerator(DiffGenerator):
    """The client of a parallel run: `DiffGenerator`'s calls, each run by every rank and answered by rank 0."""

    def __init__(self, group: RankGroup):
        self.group = group
        super().__init__(None, *(group.info or (None, None, None)))

    def generate(
        self,
        prompt: str | list[str] | None = None,
        *,
        step_callback: Callable[[int, int], None] | None = None,
        **params: Any,
    ) -> GenerationResult:
        """As `DiffGenerator.generate`; step_callback runs here, and an error it raises comes once the ranks finish."""
        return self.group.call("generate", on_progress=step_callback, prompt=prompt, **params)

    @property
    def makes_frame_blocks(self) -> bool:
        return False  # streaming runs in one process: the ranks of a parallel run return the video whole

    def load_lora(self, path, name=None, strength: float = 1.0, target: str | list[str] = "transformer") -> dict:
        return self.group.call("load_lora", path=path, name=name, strength=strength, target=target)

    def set_lora(self, adapters, strengths: Any = None) -> None:
        self.group.call("set_lora", adapters=adapters, strengths=strengths)

    def merge_lora(self) -> None:
        self.group.call("merge_lora")

    def unmerge_lora(self) -> None:
        self.group.call("unmerge_lora")

    def unload_lora(self, name: str | None = None) -> None:
        self.group.call("unload_lora", name=name)

    def list_loras(self) -> list[dict[str, Any]]:
        return self.group.call("list_loras")

    @property
    def sentinels(self) -> list[int]:
        """What `multiprocessing.connection.wait` sees become ready when a local rank exits."""
        return [process.sentinel for process in self.group.processes]

    @property
    def stopped(self) -> str | None:
        """Why the run stopped (its ranks are gone), or None while it runs."""
        return self.group.stopped

    def wait(self) -> None:
        """On a node other than 0: blocks until node 0 closes the run."""
        self.group.wait()

    def close(self) -> None:
        """Stops the ranks."""
        self.group.close()


def start_parallel_generator(server_args: ServerArgs, options: dict[str, Any]) -> ParallelGenerator:
    """Starts this node's ranks of `server_args`' run (its layout checked first, and printed), each loading the
    model with `options` (`from_pretrained`'s keyword arguments); the client once every local rank is ready."""
    layout = plan_layout(server_args)
    print(describe(layout), file=sys.stderr, flush=True)
    return ParallelGenerator(RankGroup(server_args, {**options, **layout_options(layout)}, layout))


# --- one rank of a world torchrun launched ----------------------------------------------------------------------
def launched_world_size() -> int:
    """WORLD_SIZE as torchrun sets it for each process it starts; 1 when not launched so."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launch_options(model_path: str, options: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """`from_pretrained`'s options for one request of `easel generate`: under torchrun, this process joins the world
    as its rank (LOCAL_RANK picks the device); with --num-gpus N, the layout is fixed for this request (CFG parallel
    only if it uses CFG) and checked, with the devices, before any rank starts; else the options as they are."""
    server_args = ServerArgs(model_path=model_path, **options)
    world = launched_world_size()
    if world > 1:
        if server_args.num_gpus not in (1, world):
            raise InvalidInputError(f"--num-gpus {server_args.num_gpus}, but torchrun started {world} ranks")
        single_node = dataclasses.replace(server_args, num_gpus=world, nnodes=1, node_rank=0, dist_init_addr=None)
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        layout = plan_layout(single_node, request, local_ranks)
        device = rank_devices(local_ranks, server_args.device)[int(os.environ.get("LOCAL_RANK", "0"))]
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        init_distributed(layout)
        if is_output_rank():
            print(describe(layout), file=sys.stderr, flush=True)
        return {**options, **layout_options(layout), "device": device, "progress_bar": is_output_rank()}
    if asks_parallel(server_args):
        return {**options, **layout_options(plan_layout(server_args, request))}
    return options
