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
import tempfile
import time
import types
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing

# Imported before any process group forms, so that destroy_process_group frees the group. This
# module gives ten collectives the default argument `group=group.WORLD`, evaluated once, when it is
# imported; torch._dynamo imports it (through torch.distributed.fsdp), and the first DDP(...) or
# optimizer.step() imports torch._dynamo. Imported after init_process_group, those defaults keep
# the group alive: destroy_process_group unregisters it but cannot free it, and freeing it is what
# joins gloo's threads (~ProcessGroupGloo waits for its queue, then joins). Unjoined, a gloo worker
# may still be releasing the last barrier's work, whose tensors need the GIL, while the interpreter
# finalizes; Python ends such a thread with pthread_exit, the unwinding meets a noexcept destructor,
# and the rank dies by SIGABRT ("terminate called without an active exception") after its last
# line. Imported first, the defaults are None.
import torch.distributed.nn.functional  # noqa: F401  (see above)

from tensor_features.lab.core import Lab

INIT_TIMEOUT = timedelta(seconds=60)  # init_process_group's timeout: also bounds every collective
# How long a rank started with RANK, WORLD_SIZE waits for the others to join. Rank 0 gives up after
# this long; a rank that finds no one at MASTER_ADDR after 1.2 to 1.6 times it (torch's TCPStore
# client tries twice, with a random pause between): 94 s measured with 60 s, 51 s with 40 s.
JOIN_TIMEOUT = timedelta(seconds=40)
ANSWER_TIMEOUT_S = 300.0  # the first DDP(...) imports torch._dynamo: many seconds on a busy machine
STOP_TIMEOUT_S = 10.0  # how long close() waits for the workers to exit before terminating them
HOST = "127.0.0.1"

_current: World | None = None  # the world this process runs observations in
_in_worker = False  # True inside a worker that World.launch started


# -- choosing the backend and each rank's device ------------------------------------------------

def backend_for(device: torch.device, ranks_on_this_machine: int) -> str:
    """nccl when the device is CUDA and every rank on this machine can have a GPU of its own, else gloo."""
    if device.type == "cuda" and torch.cuda.device_count() >= ranks_on_this_machine:
        return "nccl"
    return "gloo"


def rank_device(device: torch.device, backend: str, local_rank: int) -> torch.device:
    """A rank's device: its own GPU under nccl, else the CPU.

    gloo is the CPU backend: on CUDA tensors it has broadcast and all_reduce but no all_gather
    (the backend table in docs/source/distributed.rst), so with fewer GPUs than ranks the ranks
    compute on the CPU.
    """
    return torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")


# -- joining a group from the environment (torchrun's, or variables set by hand) -------------------

class JoinError(Exception):
    """The process group cannot form from this environment: a variable that is no number, RANK not
    below WORLD_SIZE, no MASTER_ADDR, a port in use, a peer that never came. A usage error: the
    program says it in one line and exits with code 2."""


@dataclass(frozen=True)
class Launch:
    """This process's place among several, as torchrun describes it (torch/distributed/run.py)."""

    rank: int
    world_size: int
    local_rank: int  # among the processes on this machine: picks this rank's GPU under nccl
    local_world_size: int


def _whole_number(name: str, lowest: int) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:  # unset, or set to nothing (`export RANK=`): not set
        return None
    try:
        value = int(text)
    except ValueError:
        raise JoinError(f"{name}={text!r} is not a whole number") from None
    if value < lowest:
        raise JoinError(f"{name}={value} must be at least {lowest}")
    return value


def launched() -> Launch | None:
    """RANK and WORLD_SIZE (and LOCAL_RANK, LOCAL_WORLD_SIZE), checked; None unless both RANK and
    WORLD_SIZE are set (a plain `python ...`). JoinError if a variable that is set cannot be meant."""
    rank, world_size = _whole_number("RANK", 0), _whole_number("WORLD_SIZE", 1)
    local_rank, local_size = _whole_number("LOCAL_RANK", 0), _whole_number("LOCAL_WORLD_SIZE", 1)
    if rank is None or world_size is None:
        return None
    if rank >= world_size:
        raise JoinError(f"RANK={rank} with WORLD_SIZE={world_size}: the ranks are 0 to {world_size - 1}")
    local_size = world_size if local_size is None else local_size  # by hand on one machine: all of them here
    local_rank = rank % local_size if local_rank is None else local_rank
    if local_size > world_size or local_rank >= local_size:
        raise JoinError(f"LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_size} and WORLD_SIZE={world_size} "
                        "do not fit: 0 <= LOCAL_RANK < LOCAL_WORLD_SIZE <= WORLD_SIZE")
    return Launch(rank, world_size, local_rank, local_size)


def _rendezvous_address(launch: Launch) -> tuple[str, int]:
    """MASTER_ADDR and MASTER_PORT, where env:// meets (rank 0 serves there unless torchrun does)."""
    address, port = os.environ.get("MASTER_ADDR", "").strip(), os.environ.get("MASTER_PORT", "").strip()
    if not address or not port:
        missing = " and ".join(name for name, value in (("MASTER_ADDR", address), ("MASTER_PORT", port)) if not value)
        raise JoinError(f"RANK={launch.rank} and WORLD_SIZE={launch.world_size} are set, but {missing} "
                        f"{'is' if ' ' not in missing else 'are'} not: torchrun --standalone --nproc-per-node "
                        f"{launch.world_size} sets all four for each process it starts; by hand, set all four")
    number = _whole_number("MASTER_PORT", 1)
    if number > 65535:
        raise JoinError(f"MASTER_PORT={number} is not a port (1 to 65535)")
    return address, number


@contextlib.contextmanager
def _stderr_held_back() -> Iterator[None]:
    """What is written to file descriptor 2 while the block runs (torch's C++ log lines: each retry to
    reach MASTER_ADDR is a warning with a C++ stack) goes to a temporary file, and back to stderr if
    the block ends normally. A block that fails leaves its caller to say what went wrong in one line."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2: nothing to hold back
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        succeeded = False
        try:
            yield
            succeeded = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if succeeded:
                held.seek(0)
                text = memoryview(held.read())
                with contextlib.suppress(OSError):
                    while text:
                        text = text[os.write(2, text):]


def join_group(launch: Launch | None, backend: str, collective_timeout: timedelta) -> None:
    """init_process_group from the environment (env://), waiting at most JOIN_TIMEOUT for the other
    ranks; then every collective gets collective_timeout. JoinError, one line, if the group cannot form."""
    if launch is None:
        raise JoinError("RANK and WORLD_SIZE are not set: this process is no rank of a group")
    address, port = _rendezvous_address(launch)
    waited = int(JOIN_TIMEOUT.total_seconds())
    try:
        with _stderr_held_back():
            dist.init_process_group(backend, timeout=JOIN_TIMEOUT)
    except (RuntimeError, ValueError) as error:  # torch's DistError family is RuntimeError
        if "EADDRINUSE" in str(error) or "address already in use" in str(error).lower():
            raise JoinError(f"MASTER_PORT={port} is in use on {address}: choose a free port "
                            "(torchrun --standalone picks one)") from None
        hint = "" if os.environ.get("TORCHELASTIC_RUN_ID") else "; torchrun starts all of them together"
        raise JoinError(f"rank {launch.rank} of WORLD_SIZE={launch.world_size} could not form the process group "
                        f"at {address}:{port} within {waited} s ({one_line(error)[:160]}){hint}") from None
    dist.set_timeout(collective_timeout)


def usage_exit(message: str) -> None:
    """A lesson's usage error: '<lesson>.py: error: message' on stderr, exit code 2."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "lesson"
    print(f"{program}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


# -- what one rank reports after an observation ---------------------------------------------------

@dataclass
class RankReport:
    """One rank's part of one observation: what its lab printed, counted and returned."""

    rank: int
    text: str  # the lines its lab printed (code and checks), after the title
    passed: int
    failed: list[str]
    returned: Any  # the observation's return value, tensors moved to the CPU


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return value


def _run_here(observation: Callable[[Lab], Any], number: int, title: str, device: torch.device,
              args: Any) -> list[RankReport]:
    """Run the observation on this rank with a lab that prints into a buffer; every rank's report.

    Collective: every rank must call it for the same observation.
    """
    lab = Lab(title, device, stream=io.StringIO())
    lab.args = args
    lab.observation = number - 1  # so that its failures are labelled [number]
    start = 0

    def body(lab: Lab) -> Any:
        nonlocal start
        start = lab.stream.tell()  # lab.run has printed the title; what follows is the observation's
        return observation(lab)

    body.__doc__ = observation.__doc__
    returned = lab.run(body)
    report = RankReport(dist.get_rank(), lab.stream.getvalue()[start:], lab.passed, list(lab.failed),
                        _to_cpu(returned))
    reports: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(reports, report)
    return reports


def merge(lab: Lab, reports: list[RankReport]) -> None:
    """Print rank 0's lines into the lesson's lab and count its checks; one check line per other rank."""
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


# -- the decorator the observations wear ------------------------------------------------------------

def on_every_rank(observation: Callable[..., Any]) -> Callable[..., Any]:
    """Run this observation on every rank of the current world; returns every rank's return value.

    The lab prints the undecorated function's code; the decorator only decides where it runs.
    """

    @functools.wraps(observation)
    def run_on_every_rank(lab: Lab) -> list[Any]:
        if _current is None:
            raise RuntimeError(f"{observation.__name__}() needs a running world: World.start(lab) in a lesson, "
                               "World.launch() in a test")
        return _current.run(observation, lab)

    return run_on_every_rank


@contextlib.contextmanager
def only_rank_0_prints() -> Iterator[None]:
    """Under torchrun, send what ranks other than 0 print (a Lab's header, --help) into a buffer.

    A Lab keeps the stream that sys.stdout was when it was made, so a lab started inside this
    block on rank 1 prints into the buffer for good. Outside torchrun it changes nothing.
    """
    try:
        launch = launched()
    except JoinError:  # World.start, or the trainer, says what is wrong with the variables
        launch = None
    if launch is None or launch.rank == 0:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


# -- the world ----------------------------------------------------------------------------------------

def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


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
        backend = backend_for(lab.device, launch.local_world_size)
        if backend == "nccl":
            torch.cuda.set_device(launch.local_rank)
        try:
            join_group(launch, backend, INIT_TIMEOUT)
        except JoinError as err:
            usage_exit(str(err))
        world = cls("joined", size, backend, lab.title, lab.args)
        world.device = rank_device(lab.device, backend, launch.local_rank)
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

    def run(self, observation: Callable[[Lab], Any], lab: Lab) -> list[Any]:
        """Run the observation on every rank, merge the reports into `lab`; every rank's return value."""
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
        merge(lab, reports)
        return [report.returned for report in reports]

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
