"""Held-out evaluations of a run: saved with what made them, reused on a resume, and watched during GRPO.

:class:`TrainingEvaluations` holds the GRPO stage's evaluations: before training, every ``eval.every`` steps
(feeding ``best/`` and the regression alarm) and after.
"""

from __future__ import annotations

import shutil

from thinktune.before_after import compared
from thinktune.config import Recipe
from thinktune.console import console
from thinktune.distributed import SINGLE
from thinktune.eval_worker import FOLDER, EvalQueue, EvalWorker
from thinktune.evaluation import evaluate_recipe, evaluation_key, evaluation_record
from thinktune.jsonl import read_jsonl
from thinktune.models import save_model
from thinktune.rollout import evaluation_backend
from thinktune.run_dir import RunDir
from thinktune.watch import EvaluationWatch, Regression


def evaluate_and_save(run: RunDir, label: str, backend, recipe: Recipe, held_out, rewards, task, ranks=SINGLE):
    """Greedy held-out evaluation, printed and written to ``eval_<label>.json`` with the fingerprint of what it
    was made with (:func:`evaluation_key`); returns metrics and samples. Several processes generate their parts;
    process 0 scores and saves, the others get None."""
    result = evaluate_recipe(backend, recipe, held_out, rewards, task, label=f"eval {label}", ranks=ranks)
    return result and keep_evaluation(run, label, evaluation_record(recipe, result))


def keep_evaluation(run: RunDir, label: str, saved: dict) -> dict:
    """``eval_<label>.json``, and its figures printed."""
    run.write_json(f"eval_{label}.json", saved)
    metrics = saved["metrics"]
    console.print(f"eval {label}: " + "  ".join(f"{k} {metrics[k]:.3f}" for k in compared(metrics)))
    return saved


def earlier_evaluation(run: RunDir, label: str, recipe: Recipe) -> dict | None:
    """``eval_<label>.json`` when it was made by this recipe's model, data and evaluation settings; one made
    otherwise (another model, eval_size, reward…) is ignored, saying so, and made again."""
    saved = run.read_json(f"eval_{label}.json")
    if saved is None or saved.get("made_by") == evaluation_key(recipe):
        return saved
    console.print(
        f"[yellow]eval_{label}.json was made with another model, data or evaluation settings: evaluating again[/]"
    )
    return None


def last_evaluation(run: RunDir, step: int, before: dict | None) -> tuple[int, dict] | None:
    """The newest evaluation at or before ``step`` (from its file), for the next one to be compared with."""
    curve = [r for r in read_jsonl(run.file("eval_curve.jsonl")) if 0 < r["step"] <= step]
    if curve and (evaluation := run.read_json(f"eval_{curve[-1]['label']}.json")):
        return curve[-1]["step"], evaluation
    return (0, before) if before else None


class TrainingEvaluations:
    """The GRPO stage's held-out evaluations of ``trainer``'s policy. With several processes every process
    generates its part of each and process 0 records it (the evaluation worker, if any, is process 0's alone).

    Each is saved, logged to the tracker's eval stage and checked by the :class:`EvaluationWatch`: a better one
    (with ``eval.every``) is kept in ``best/``, a significant drop while the reward rises raises the alarm. With
    ``eval.worker`` the ``eval.every`` evaluations are made by the :class:`EvalWorker` and recorded as they arrive.
    """

    def __init__(self, context, trainer):
        self.recipe, self.run, self.tracker = context.recipe, context.run, context.tracker
        self.trainer, self.ranks, self.main = trainer, context.ranks, context.ranks.main
        self.held_out = context.splits.held_out
        best = self.run.read_json("best.json") if context.resume else None
        self.watch = EvaluationWatch(self.recipe.eval.best_metric, best)
        self.alarms: list[str] = []
        self.worker: EvalWorker | None = None

    def evaluate(self, label: str, step: int) -> tuple[dict, Regression | None]:
        """One evaluation (before, every N steps, after), made here, and what the watch makes of it (None, None on
        all but process 0)."""
        t = self.trainer
        backend = evaluation_backend(self.recipe, t.model, t.tokenizer, t.backend)
        result = evaluate_and_save(self.run, label, backend, self.recipe, self.held_out, t.rewards, t.task, self.ranks)
        return (result, self.record(label, step, result)) if result else (None, None)

    def record(self, label: str, step: int, result: dict, snapshot=None) -> Regression | None:
        """The watch's verdict on an evaluation, logged; a better one becomes ``best/`` (``snapshot``: the worker's
        folder of that step's weights, else the policy as it is now)."""
        rewards = {r["step"]: r["reward"] for r in read_jsonl(self.run.file("metrics.jsonl"))}
        alarm = self.watch.check(step, result, rewards)
        if alarm:
            self.alarms.append(alarm.message(self.watch.metric))
            console.print(f"[bold yellow]regression alarm: {self.alarms[-1]}[/]")
        self.tracker.log(step, {"label": label, **result["metrics"], **(alarm.fields() if alarm else {})}, stage="eval")
        if self.recipe.eval.every and self.watch.improved(step, result):
            best, t = self.run.file("best"), self.trainer
            if snapshot is None:
                save_model(t.model, t.tokenizer, best, t.engine.whole_state_dict())
            else:
                shutil.rmtree(best, ignore_errors=True)
                snapshot.rename(best)
            self.run.write_json("best.json", self.watch.best)
        return alarm

    def during_training(self, step: int) -> bool:
        """The ``eval.every`` evaluation (made here, or snapshotted for the worker); True stops training (the alarm,
        with ``eval.stop_on_regression``)."""
        if self.recipe.eval.worker:
            if self.worker is None:  # process 0's alone (and none without held-out problems)
                return False
            t = self.trainer
            self.worker.submit(step, t.model, t.tokenizer, t.engine.whole_state_dict())
            return self.arrived()
        _, alarm = self.evaluate(f"step{step}", step)
        return alarm is not None and self.recipe.eval.stop_on_regression

    def arrived(self) -> bool:
        """Record the worker's results that have arrived, in step order; True stops training (an alarm among
        them, with ``eval.stop_on_regression``)."""
        halt = False
        for step, saved in self.worker.arrived() if self.worker else []:
            alarm = self.record(f"step{step}", step, keep_evaluation(self.run, f"step{step}", saved),
                                self.worker.queue.snapshot(step))  # fmt: skip
            self.worker.done(step)
            halt |= alarm is not None and self.recipe.eval.stop_on_regression
        return halt

    def finish(self) -> None:
        """Wait for the worker's last results and record them (the summary and the evaluation after need them)."""
        if self.worker:
            while self.worker.pending():
                self.worker.wait()
                self.arrived()
            self.close()

    def close(self, finished: bool = True) -> None:
        if self.worker:
            self.worker.close(finished)
            self.worker = None

    def before(self, start: int) -> dict | None:
        """The evaluation before training: made by the SFT stage, a sweep or before a crash, else made now; the watch
        then compares the next one with the newest at or before ``start``. The worker, if any, starts here."""
        before = None
        if self.recipe.eval.before and self.held_out:
            before = earlier_evaluation(self.run, "before", self.recipe) if self.main else None
            before = self.ranks.gather(before)[0]  # process 0 decides; every process takes part
            if before is None:
                before, _ = self.evaluate("before", 0)
            elif start == 0:
                self.tracker.log(0, {"label": "before", **before["metrics"]}, stage="eval")
        self.watch.previous = last_evaluation(self.run, start, before)
        if self.main and self.held_out:
            recorded = {r["step"] for r in read_jsonl(self.run.file("eval_curve.jsonl"))}
            left = EvalQueue(self.run.file(FOLDER)).pending(start, recorded)  # by a worker before the resume
            if self.recipe.eval.worker or left:
                self.worker = EvalWorker(self.run, self.recipe, start, recorded)
            if left and not self.recipe.eval.worker:  # eval.worker switched off on resume: those first, then inline
                self.finish()
        return before
