"""The plumbing of a lesson that runs on several processes (chapter 09): start or join a process
group, run each observation on every rank, and bring every rank's checks back to one lab.

One code path for the observation, three ways to get there:

  * ``torchrun --standalone --nproc-per-node 2 LESSON.py``: every process runs the lesson as a
    script. ``World.start`` joins the group torchrun prepared (``env://``: RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT; see torch/distributed/run.py), each observation runs on every
    rank, and rank 0 prints. The same variables set by hand join the same way (``join_group``,
    shared with the trainer); when they cannot form a group (not numbers, RANK not below
    WORLD_SIZE, no MASTER_ADDR, a port in use, a peer that does not come within ``JOIN_TIMEOUT``)
    the process ends with one line on stderr and exit code 2.
  * ``python LESSON.py``, a notebook, a test: ``World.start`` (or ``World.launch``) starts the
    worker processes with ``torch.multiprocessing`` (the spawn start method) and a process group
    among them. Each observation is sent to every worker, runs there, and rank 0's printed lines
    come back here to be printed. A spawned process can import a file but not a notebook cell,
    so the observation travels as source text: the lesson file (in a notebook: the cell that
    started the world, then the observation's own cell), which the worker runs as an import
    would, with an inert lab, before it calls the observation.
  * ``import`` (tests): the lab is inert and ``World.start`` does nothing.

On every rank the observation prints into a lab of its own (a buffer). Rank 0's lines are the
ones shown; each other rank adds one check line, "rank 1: 4/4 checks match", so a check that
disagrees on any rank makes the run exit 1. A rank that raises ends the run with one line on
stderr and exit code 1, never a hang: the process group has a timeout, and this process
watches the workers' exits and gives up on an answer after ``ANSWER_TIMEOUT_S``.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import functools
import io
import linecache
import multiprocessing
import multiprocessing.connection
import os
import pickle
import sys
import time
import types
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing

from tensor_features.lab.core import Lab, Seen
from tensor_features.ranks import (  # noqa: F401 (only_rank_0_prints: lesson 09 imports it from here)
    JoinError, Launch, backend_for, join_group, launched, one_line, only_rank_0_prints, place_rank,
    rank_device)

INIT_TIMEOUT = timedelta(seconds=60)  # init_process_group's timeout: also bounds every collective
ANSWER_TIMEOUT_S = 300.0  # the first DDP(...) imports torch._dynamo: many seconds on a busy machine
STOP_TIMEOUT_S = 10.0  # how long close() waits for the workers to exit before terminating them
HOST = "127.0.0.1"

_current: World | None = None  # the world this process runs observations in
_in_worker = False  # True inside a worker that World.launch started


def usage_exit(message: str) -> None:
    """A lesson's usage error: '<lesson>.py: error: message' on stderr, exit code 2."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "lesson"
    print(f"{program}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


# -- what one rank reports after an observation ---------------------------------------------------

@dataclass
class RankReport:
    """One rank's part of one observation: what its lab printed and counted, and what its checks saw."""

    rank: int
    text: str  # the lines its lab printed (code and checks), after the title
    passed: int
    failed: list[str]
    seen: Seen  # its checks' values by label, and in .names its locals (see _fit_to_travel)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, BaseException):
        # Without its traceback: the frames it holds hold the observation's locals (a DDP model,
        # and through it the process group, which then cannot be freed when the world closes).
        return value.with_traceback(None)
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return value


# What travels from a rank to the lesson's process as it is. Not a model, an autograd node, a
# function: a DDP model, unpickled here, would look for a process group this process is not in.
_TRAVELS = (torch.Tensor, torch.Size, bool, int, float, complex, str, bytes, type(None), BaseException)


def _travels(value: Any) -> bool:
    """A tensor, a number, a text, an error, or a list, tuple or dict of such values."""
    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        return all(_travels(item) for item in value)
    if isinstance(value, dict):
        return all(_travels(key) and _travels(item) for key, item in value.items())
    return isinstance(value, _TRAVELS)


def _fit_to_travel(seen: Seen) -> Seen:
    """A rank's Seen, fit to send: tensors on the CPU; a checked value that cannot travel as its
    repr(); of the observation's locals, those that can travel (not lab, a model or a hook)."""
    sent = Seen()
    for label in seen:
        for value in seen.every(label):
            sent.add(label, _to_cpu(value) if _travels(value) else repr(value))
    for label, expectation in seen.expected.items():
        value = expectation.value
        sent.expected[label] = replace(expectation,
                                       value=_to_cpu(value) if _travels(value) else repr(value))
    sent.names = {name: _to_cpu(value) for name, value in seen.names.items()
                  if name != "lab" and _travels(value)}
    return sent


def _run_here(observation: Callable[[Lab], Any], number: int, title: str, device: torch.device,
              args: Any) -> list[RankReport]:
    """Run the observation on this rank with a lab that prints into a buffer; every rank's report.

    Collective: every rank must call it for the same observation.
    """
    lab = Lab(title, device, stream=io.StringIO())
    lab.args = args
    lab.observation = number - 1  # so that its failures are labelled [number]
    start = lab.stream.tell()
    seen = lab.run(observation)  # the observation itself, so that seen.names are its locals
    # After the title lab.run printed ("\n[number] title\n"): the observation's own lines.
    text = lab.stream.getvalue()[start:].split("\n", 2)[2]
    report = RankReport(dist.get_rank(), text, lab.passed, list(lab.failed), _fit_to_travel(seen))
    del seen, lab  # the observation's own objects (a DDP model) go now, not at some later collection
    reports: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(reports, report)
    return reports


def merge(lab: Lab, reports: list[RankReport]) -> list[Seen]:
    """Print rank 0's lines into the lesson's lab and count its checks; one check line per other rank.

    What rank 0's checks saw goes into lab.seen too, as if they had run here (rank 0's lines are
    the ones shown); lab.seen.ranks holds every rank's Seen, in rank order, each with its .names.
    Returns that list.
    """
    first = reports[0]
    lab.write(first.text)
    lab.passed += first.passed
    lab.failed.extend(first.failed)
    for report in reports[1:]:
        total = report.passed + len(report.failed)
        lab.record(not report.failed, f"rank {report.rank}: {report.passed}/{total} checks match",
                    f"{total}/{total}", f"rank {report.rank} ran the same code in its own process",
                    details=report.failed)
    lab.stream.flush()
    for label in first.seen:
        for value in first.seen.every(label):
            lab.seen.add(label, value)
    lab.seen.expected.update(first.seen.expected)
    lab.seen.names = first.seen.names  # what a notebook leaves to inspect: rank 0's variables
    lab.seen.ranks = [report.seen for report in reports]
    return lab.seen.ranks


# -- the decorator the observations wear ------------------------------------------------------------

def on_every_rank(observation: Callable[..., Any]) -> Callable[..., Any]:
    """Run this observation on every rank of the current world. What each rank's checks saw comes
    back into the lab's Seen: rank 0's under their labels, every rank's in .ranks (see merge), so
    that `lab.run(observation)` returns them.

    The lab prints the undecorated function's code; the decorator only decides where it runs.
    """

    @functools.wraps(observation)
    def run_on_every_rank(lab: Lab) -> None:
        if _current is None:
            raise RuntimeError(f"{observation.__name__}() needs a running world: World.start(lab) in a lesson, "
                               "World.launch() in a test")
        _current.run(observation, lab)

    return run_on_every_rank


# -- the world ----------------------------------------------------------------------------------------

def _caller_source(depth: int) -> tuple[str, str] | None:
    """(file name, text) of the code `depth` frames up: the lesson file, or the notebook cell."""
    frame = sys._getframe(depth + 1)
    lines = linecache.getlines(frame.f_code.co_filename, frame.f_globals)
    return (frame.f_code.co_filename, "".join(lines)) if lines else None


class World:
    """The processes an observation runs on, seen from this process.

    role "joined": this process is one rank (torchrun); "launcher": this process started the
    workers and talks to them through pipes; "inert": nothing runs (an imported lesson).
    """

    def __init__(self, role: str, size: int, backend: str | None = None, title: str = "", args: Any = None):
        self.role = role
        self.size = size
        self.backend = backend
        self.title = title
        self.args = args
        self.setup: tuple[str, str] | None = None  # the source that started the world (launcher)
        self.device = torch.device("cpu")  # this rank's device (joined)
        self._context = None
        self._connections: list[multiprocessing.connection.Connection] = []
        self._store = None

    # -- starting -----------------------------------------------------------------------------

    @classmethod
    def start(cls, lab: Lab, size: int = 2) -> "World":
        """The lesson's world: join torchrun's group, or launch `size` workers, or (imported) nothing."""
        global _current
        if not lab.live or _in_worker:
            return cls("inert", size)
        try:
            launch = launched()
        except JoinError as err:
            usage_exit(str(err))
        if _current is not None:  # the setup cell ran again in a notebook: the old world goes first
            _current.close()
        if launch is not None:
            world = cls._join(lab, size, launch)
        else:
            world = cls.launch(size, lab.device, title=lab.title, args=lab.args)
            world.setup = _caller_source(1)
        _current = world
        return world

    @classmethod
    def _join(cls, lab: Lab, size: int, launch: Launch) -> "World":
        """Join the process group torchrun set up (env://); a group that cannot form is a usage error."""
        if launch.world_size != size:
            usage_exit(f"this lesson is written for {size} processes; "
                       f"WORLD_SIZE is {launch.world_size} (torchrun --nproc-per-node {size})")
        backend, placed = place_rank(lab.device, launch)
        try:
            join_group(launch, backend, INIT_TIMEOUT)
        except JoinError as err:
            usage_exit(str(err))
        world = cls("joined", size, backend, lab.title, lab.args)
        world.device = placed
        return world

    @classmethod
    def launch(cls, size: int = 2, device: torch.device | str = "cpu", title: str = "", args: Any = None) -> "World":
        """Start `size` worker processes (spawn) that form one process group; this process is none of them.

        The rendezvous is a TCPStore this process serves on a free port of 127.0.0.1.
        """
        global _current
        device = torch.device(device)
        backend = backend_for(device, size)
        world = cls("launcher", size, backend, title, args)
        world._store = dist.TCPStore(HOST, 0, size, is_master=True, wait_for_workers=False,
                                     timeout=INIT_TIMEOUT)
        main = sys.modules.get("__main__")
        if main is not None and not hasattr(main, "__spec__"):
            main.__spec__ = None  # a notebook kernel after %reset has none, and spawn reads it
        context = multiprocessing.get_context("spawn")
        pipes = [context.Pipe() for _ in range(size)]
        world._connections = [ours for ours, _ in pipes]
        theirs = [their_end for _, their_end in pipes]
        world._context = torch.multiprocessing.start_processes(
            _worker, args=(size, theirs, world._store.port, backend), nprocs=size, join=False,
            start_method="spawn")
        for their_end in theirs:
            their_end.close()
        atexit.register(world.close)  # if the lesson stops before its last cell
        _current = world
        world._answers({"ready"}, expected_from=range(size), what="starting the process group")
        return world

    # -- running an observation -----------------------------------------------------------------

    def run(self, observation: Callable[[Lab], Any], lab: Lab) -> list[Seen]:
        """Run the observation on every rank, merge the reports into `lab`; what every rank's checks saw."""
        number = lab.observation
        if self.role == "joined":
            try:
                reports = _run_here(observation, number, self.title, self.device, self.args)
            except Exception as error:  # noqa: BLE001 - one line, then out, as the launcher does
                print(f"{self.title}: rank {dist.get_rank()} failed in [{number}] {observation.__name__}: "
                      f"{one_line(error)}", file=sys.__stderr__, flush=True)
                os._exit(1)  # at once: a peer waiting in a collective sees the connection close
        elif self.role == "launcher":
            sources = [source for source in (self.setup, _function_source(observation)) if source is not None]
            sources = list(dict((name, (name, text)) for name, text in sources).values())  # once per file
            job = {"sources": sources, "name": observation.__name__, "number": number,
                   "title": self.title or lab.title, "device": lab.device.type, "args": lab.args}
            for connection in self._connections:
                connection.send_bytes(pickle.dumps(job))
            (reports,) = self._answers({"done"}, expected_from=[0],
                                       what=f"[{number}] {observation.__name__}")
        else:
            raise RuntimeError("an inert world runs nothing")
        return merge(lab, reports)

    def _answers(self, kinds: set[str], expected_from, what: str) -> list[Any]:
        """Wait for one message of `kinds` from each rank in expected_from; fail on an error or an exit.

        When several ranks report errors, the earliest is the cause (a rank that raises makes its
        peers' collectives fail a moment later), so that is the one reported.
        """
        waiting = set(expected_from)
        answers: dict[int, Any] = {}
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        processes = self._context.processes
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"no answer from rank {min(waiting)} within {ANSWER_TIMEOUT_S:.0f} s ({what})")
            multiprocessing.connection.wait(self._connections + [p.sentinel for p in processes], left)
            errors = []
            for rank, connection in enumerate(self._connections):
                while connection.poll():
                    try:
                        kind, sent_at, payload = pickle.loads(connection.recv_bytes())
                    except (EOFError, OSError):
                        break  # the pipe closed: the exit is reported below
                    if kind == "error":
                        errors.append((sent_at, rank, payload))
                    elif kind in kinds:
                        answers[rank] = payload
                        waiting.discard(rank)
            if errors:
                _, rank, payload = min(errors)
                self._fail(f"rank {rank} failed in {what}: {payload}")
            for rank, process in enumerate(processes):
                if process.exitcode is not None:  # a worker leaves only when told to, or after an error
                    self._fail(f"rank {rank} exited with code {process.exitcode} ({what})")
        return [answers[rank] for rank in sorted(answers)]

    def _fail(self, message: str) -> None:
        """Stop every worker and end the run with one line (SystemExit: exit code 1)."""
        self._stop(graceful=False)
        raise SystemExit(f"{self.title}: {message}" if self.title else message)

    # -- stopping -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the workers (launcher) or leave the process group (joined)."""
        global _current
        if self.role == "joined" and dist.is_initialized():
            # Leave together: a rank that tears gloo down while its peer still finishes the last
            # collective can make that peer's teardown fail. The barrier is bounded by the group's timeout.
            with contextlib.suppress(RuntimeError):
                dist.barrier()
            dist.destroy_process_group()
        elif self.role == "launcher":
            self._stop(graceful=True)
        if _current is self:
            _current = None

    def _stop(self, graceful: bool) -> None:
        global _current
        if self._context is None:
            return
        processes = self._context.processes
        if graceful:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.send_bytes(pickle.dumps(None))
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for process in processes:
                process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()
        for connection in self._connections:
            connection.close()
        self._context, self._connections, self._store = None, [], None
        if _current is self:
            _current = None


def _function_source(observation: Callable[..., Any]) -> tuple[str, str]:
    """(file name, text) of the file or notebook cell the observation was defined in."""
    code = observation.__code__
    lines = linecache.getlines(code.co_filename, observation.__globals__)
    if not lines:
        raise RuntimeError(f"the source of {observation.__name__}() cannot be read ({code.co_filename})")
    return code.co_filename, "".join(lines)


# -- inside a worker -------------------------------------------------------------------------------------

def _load(sources: list[tuple[str, str]], modules: dict[str, types.ModuleType], name: str) -> Callable[..., Any]:
    """Run the sources (once each) as a module with an inert lab; the observation called `name`.

    The text is registered with linecache under its own file name, so the lab prints the code that
    was sent, line for line, even for a notebook cell that exists in no file.
    """
    key = sources[0][0]
    if key not in modules:
        module = types.ModuleType(f"lesson_in_worker_{len(modules)}")
        module.__dict__.update(__file__=key, __doc__=None, __builtins__=builtins)
        sys.modules[module.__name__] = module
        module.__dict__["__ran__"] = set()
        modules[key] = module
    module = modules[key]
    for filename, text in sources:
        if (filename, text) in module.__ran__:
            continue
        linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
        # dont_inherit: compile the lesson as Python would, not with this module's __future__ flags.
        exec(compile(text, filename, "exec", dont_inherit=True), module.__dict__)  # noqa: S102
        module.__ran__.add((filename, text))
    decorated = module.__dict__[name]
    return getattr(decorated, "__wrapped__", decorated)


def _worker(rank: int, size: int, connections: list, port: int, backend: str) -> None:
    """One worker: join the group, then run every observation it is sent, until it is sent None."""
    global _in_worker
    _in_worker = True
    connection = connections[rank]
    for other, their_end in enumerate(connections):
        if other != rank:
            their_end.close()
    try:
        store = dist.TCPStore(HOST, port, size, is_master=False, timeout=INIT_TIMEOUT)
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=INIT_TIMEOUT)
        connection.send_bytes(pickle.dumps(("ready", time.time(), None)))
        modules: dict[str, types.ModuleType] = {}
        while True:
            job = pickle.loads(connection.recv_bytes())
            if job is None:
                break
            observation = _load(job["sources"], modules, job["name"])
            device = rank_device(torch.device(job["device"]), backend, rank)
            reports = _run_here(observation, job["number"], job["title"], device, job["args"])
            if rank == 0:
                connection.send_bytes(pickle.dumps(("done", time.time(), reports)))
    except Exception as error:  # noqa: BLE001 - reported to the launcher as one line
        with contextlib.suppress(OSError):
            connection.send_bytes(pickle.dumps(("error", time.time(), one_line(error))))
        os._exit(1)  # at once: a peer waiting in a collective sees the connection close
    dist.destroy_process_group()
    os._exit(0)  # skip the interpreter's teardown (seconds, with torch._dynamo loaded); nothing is left to flush
