"""The evaluation worker: the held-out evaluations of ``eval.every`` in a process of their own, on ``eval.device``,
so training does not wait for them (the original systems' second device, evaluating while the first trains).

The trainer's process (process 0) writes the policy of each due step to ``eval_worker/step<N>/``, a model or adapter
folder as ``best/`` holds, and goes on training. The worker evaluates the snapshots in step order and writes
``eval_worker/step<N>.json``. Between steps the trainer takes the results that have arrived, in step order, and
records them as it records an inline evaluation: ``eval_step<N>.json``, ``eval_curve.jsonl``, the regression alarm,
and ``best/`` (the snapshot itself becomes ``best/``).

    worker = EvalWorker(run, recipe, start, recorded)  # starts ``python -m thinktune.eval_worker``
    worker.submit(step, model, tokenizer, weights)   # a snapshot; training goes on
    for step, saved in worker.arrived(): ...         # finished results, oldest first; then worker.done(step)
    worker.close()

A worker that dies is reported and started again. It takes up the first snapshot without a result, so no
evaluation is lost and none is made twice. A snapshot is removed only once its result is recorded, so a run stopped
or crashed in between has its evaluations made on ``--resume``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from thinktune.console import console

FOLDER = "eval_worker"
RESTARTS = 3  # crashes allowed on one snapshot before the run stops
POLL_SECONDS = 0.2


class EvalWorkerError(RuntimeError):
    pass


class EvalQueue:
    """The folder the trainer and the worker share: ``recipe.yaml`` (what to evaluate with), ``step<N>/`` snapshots,
    ``step<N>.json`` results and ``stop`` (no more snapshots will come)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.recipe = self.folder / "recipe.yaml"
        self.stop = self.folder / "stop"

    def snapshot(self, step: int) -> Path:
        return self.folder / f"step{step}"

    def result(self, step: int) -> Path:
        return self.folder / f"step{step}.json"

    def steps(self) -> list[int]:
        """Steps with a complete snapshot (``save_model`` renames a whole folder into place), oldest first."""
        if not self.folder.is_dir():
            return []
        names = [p.name for p in self.folder.iterdir() if p.is_dir()]
        return sorted(int(n[4:]) for n in names if n.startswith("step") and n[4:].isdigit())

    def waiting(self) -> list[int]:
        """Snapshots not evaluated yet, oldest first."""
        return [s for s in self.steps() if not self.result(s).is_file()]

    def pending(self, start: int, recorded) -> list[int]:
        """Snapshots a run resumed after ``start`` still has to record: not after the checkpoint, not recorded."""
        return [s for s in self.steps() if s <= start and s not in recorded]

    def write_result(self, step: int, saved: dict) -> None:
        partial = self.folder / f"step{step}.json.partial"  # not save_model's step<N>.partial folder
        partial.write_text(json.dumps(saved))
        os.replace(partial, self.result(step))  # a result is whole or absent

    def remove(self, step: int) -> None:
        self.result(step).unlink(missing_ok=True)  # first: a result never outlives its snapshot
        shutil.rmtree(self.snapshot(step), ignore_errors=True)

    def keep_only(self, steps: list[int]) -> None:
        """Remove every snapshot, result and partial file but those of ``steps`` (a resume's clean start)."""
        kept = {f"step{s}" for s in steps} | {f"step{s}.json" for s in steps}
        for path in self.folder.iterdir() if self.folder.is_dir() else []:
            if path.name.startswith("step") and path.name not in kept:
                shutil.rmtree(path) if path.is_dir() else path.unlink()


class EvalWorker:
    """The trainer's side: snapshots in, results out, the worker process kept alive. Process 0 alone has one.

    On a resume (``start`` > 0) snapshots of steps after the checkpoint are dropped, since those steps train again.
    Snapshots whose evaluation is already in ``eval_curve.jsonl`` (``recorded``) are dropped as well, and so is any
    result or partial file left without its snapshot. The rest are evaluated.
    """

    def __init__(self, run, recipe, start: int = 0, recorded: set[int] = frozenset()):
        from thinktune.recipe import dump_recipe

        self.run, self.queue = run, EvalQueue(run.file(FOLDER))
        self.queue.folder.mkdir(exist_ok=True)
        self.queue.stop.unlink(missing_ok=True)
        self.queue.keep_only(self.queue.pending(start, recorded))
        self.queue.recipe.write_text(dump_recipe(recipe))
        self.log = run.file("eval_worker.log")
        self.process: subprocess.Popen | None = None
        self.crashes: dict[int, int] = {}
        self.restart()

    def submit(self, step: int, model, tokenizer, state_dict=None) -> None:
        """Snapshot the policy after ``step`` for the worker (``state_dict``: whole weights under fsdp)."""
        from thinktune.models import save_model

        save_model(model, tokenizer, self.queue.snapshot(step), state_dict)
        self.watch()

    def arrived(self) -> list[tuple[int, dict]]:
        """Results finished so far, oldest first, up to the first snapshot still waiting (records stay in order)."""
        self.watch()
        ready = []
        for step in self.queue.steps():
            if not self.queue.result(step).is_file():
                break
            ready.append((step, json.loads(self.queue.result(step).read_text())))
        return ready

    def done(self, step: int) -> None:
        """``step``'s result is recorded: its snapshot (unless it became best/) and result go."""
        self.queue.remove(step)

    def pending(self) -> bool:
        return bool(self.queue.steps())

    def wait(self) -> None:
        """Until a result arrives or nothing is pending (a crash on the way is handled by :meth:`watch`)."""
        while self.queue.waiting() and not self.arrived():
            time.sleep(POLL_SECONDS)

    def watch(self) -> None:
        """Start the worker again if it died with snapshots waiting; stop the run after :data:`RESTARTS` crashes on
        one snapshot."""
        if self.process is None or self.process.poll() is None:
            return
        waiting = self.queue.waiting()
        if not waiting:
            return
        step, code = waiting[0], self.process.returncode
        self.crashes[step] = self.crashes.get(step, 0) + 1
        if self.crashes[step] > RESTARTS:
            raise EvalWorkerError(
                f"the evaluation worker died {self.crashes[step]} times evaluating step {step} (exit code {code}; "
                f"see {self.log}); its snapshot stays in {self.queue.folder} and is evaluated on --resume"
            )
        console.print(
            f"[yellow]evaluation worker died (exit code {code}) while evaluating step {step}; see {self.log}. "
            f"Starting it again ({self.crashes[step]} of {RESTARTS} restarts).[/]"
        )
        self.restart()

    def restart(self) -> None:
        # The worker imports what this process imports (user rewards by module name), from the same paths.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "THINKTUNE_EVAL_WORKER": "1"}
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "thinktune.eval_worker", str(self.queue.folder), str(os.getpid())],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def close(self, finished: bool = True) -> None:
        """Stop the worker: once idle (``finished``), or at once (an interrupted run; its snapshots stay for
        ``--resume``)."""
        if self.process is None:
            return
        self.queue.stop.touch()
        try:
            if finished:
                self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


def serve(folder: Path, parent: int) -> None:
    """The worker's loop: evaluate each waiting snapshot, oldest first, until ``stop`` is written and nothing waits,
    or the trainer's process is gone."""
    from thinktune.data import load_examples
    from thinktune.evaluation import evaluate_recipe, evaluation_record
    from thinktune.models import load_for_inference
    from thinktune.recipe import load_recipe
    from thinktune.rewards.scoring import recipe_scoring
    from thinktune.rollout import evaluation_backend

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the trainer, which stops the worker itself
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    queue = EvalQueue(folder)
    recipe = load_recipe(queue.recipe)
    if threads := recipe.eval.worker_threads or recipe.run.threads:
        import torch

        torch.set_num_threads(threads)
    device = recipe.eval.device or recipe.model.device
    _, held_out, task_dataset = load_examples(recipe.data, recipe.eval.split)
    while True:
        waiting = queue.waiting()
        if not waiting:
            if queue.stop.exists():
                return
            time.sleep(POLL_SECONDS)
            continue
        step = waiting[0]
        model, tokenizer = load_for_inference(str(queue.snapshot(step)), device, recipe.model.dtype)
        rewards, task = recipe_scoring(recipe, task_dataset, tokenizer)
        backend = evaluation_backend(recipe, model, tokenizer)
        result = evaluate_recipe(backend, recipe, held_out, rewards, task, label=f"eval step{step}")
        queue.write_result(step, evaluation_record(recipe, result))
        console.print(f"evaluated step {step}")


def _exit_with(parent: int) -> None:
    """End this process as soon as the trainer's is gone (killed, say), even mid-evaluation: the snapshot stays for
    the worker of ``--resume``, and two workers never evaluate one snapshot."""
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    os._exit(0)


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]))
