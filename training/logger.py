"""Console + CSV logging (always) and Weights & Biases (offline by default), plus the learning-curve plot."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from common.files import atomic_replace

WANDB_MODES = ("disabled", "offline", "online")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class CSVLog:
    """A CSV file of rows keyed by ``step``; new keys widen the header, resume drops rows past a step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict] = []
        self.fields: list[str] = []
        if path.exists():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or [])
                self.rows = [dict(r) for r in reader]

    def truncate_after(self, step: int) -> None:
        self.rows = [r for r in self.rows if float(r["step"]) <= step]
        self._rewrite()

    def _rewrite(self) -> None:
        with atomic_replace(self.path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields)
            w.writeheader()
            w.writerows(self.rows)

    def append(self, row: dict) -> None:
        new = [k for k in row if k not in self.fields]
        self.rows.append(row)
        if new or not self.path.exists():
            self.fields += new
            self._rewrite()
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(row)


class Logger:
    """Writes ``train.csv`` and ``eval.csv`` in the run directory, prints one line per log call
    (through tqdm so the progress bar stays intact), mirrors everything to wandb unless
    ``wandb_mode="disabled"``, and redraws ``learning_curve.png`` after every evaluation."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        config: dict,
        run_id: str,
        wandb_mode: str = "offline",
        wandb_project: str = "latentrl",
        wandb_group: str | None = None,
        resume_step: int | None = None,
        title: str = "",
    ) -> None:
        if wandb_mode not in WANDB_MODES:
            raise ValueError(f"wandb.mode must be one of {WANDB_MODES}, got {wandb_mode!r}")
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.csv = {k: CSVLog(self.run_dir / f"{k}.csv") for k in ("train", "eval")}
        if resume_step is not None:
            for log in self.csv.values():
                log.truncate_after(resume_step)
        self._wandb = None
        if wandb_mode != "disabled":
            # Our top-level package is named ``agents``, which wandb mistakes for an LLM-agents SDK
            # and answers with an advert for its tracing product; this is no LLM code.
            os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")
            import wandb

            self._wandb = wandb.init(
                project=wandb_project,
                group=wandb_group,
                config=config,
                dir=str(self.run_dir),
                id=run_id,
                resume="allow",
                mode=wandb_mode,
                settings=wandb.Settings(silent=True),
            )

    def log(self, kind: str, step: int, metrics: dict[str, Any], console: bool = True) -> None:
        row = {"step": step, **metrics}
        self.csv[kind].append(row)
        if console:
            body = " | ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
            tqdm.write(f"{kind:5s} | step {step} | {body}")
        if self._wandb is not None:
            self._wandb.log({f"{kind}/{k}": v for k, v in metrics.items()}, step=step)
        if kind == "eval":
            self.plot()

    def plot(self) -> Path | None:
        """Eval return (mean ± std) vs env steps, training episode returns faintly, success if logged."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ev = self.csv["eval"].rows
        if not ev:
            return None
        path = self.run_dir / "learning_curve.png"
        has_success = any(r.get("success_rate", "") not in ("", None) for r in ev)
        fig, axes = plt.subplots(1, 2 if has_success else 1, figsize=(11 if has_success else 6, 4))
        ax = axes[0] if has_success else axes
        tr = [r for r in self.csv["train"].rows if r.get("episode_return", "") not in ("", None)]
        if tr:
            ax.plot(
                [float(r["step"]) for r in tr],
                [float(r["episode_return"]) for r in tr],
                color="0.7",
                lw=0.8,
                label="train episode",
            )
        x = [float(r["step"]) for r in ev]
        m = [float(r["return_mean"]) for r in ev]
        s = [float(r.get("return_std") or 0.0) for r in ev]
        ax.plot(x, m, "o-", color="C0", label="eval (mean ± std)")
        ax.fill_between(x, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], color="C0", alpha=0.2)
        ax.set_xlabel("env steps")
        ax.set_ylabel("episode return")
        ax.set_title(self.title)
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
        if has_success:
            ys = [float(r["success_rate"]) if r.get("success_rate") not in ("", None) else math.nan for r in ev]
            axes[1].plot(x, ys, "o-", color="C2")
            axes[1].set_ylim(-0.05, 1.05)
            axes[1].set_xlabel("env steps")
            axes[1].set_ylabel("eval success rate")
            axes[1].grid(alpha=0.3)
        fig.tight_layout()
        try:
            with atomic_replace(path) as tmp:  # keeps the .png suffix: savefig picks the format from it
                fig.savefig(tmp, dpi=100)
        finally:
            plt.close(fig)
        return path

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
