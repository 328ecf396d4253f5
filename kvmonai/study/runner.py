"""``kvmonai study``: train and evaluate architecture/attention pairs through their bundles, then report.

Every pair runs through its MONAI bundle (``bundles/<arch>_<attention>``) with ``monai.bundle.ConfigWorkflow``, the
class ``python -m monai.bundle run`` uses, so the study and a user's own bundle runs share one code path and one
recipe. Results of each (pair, fold, seed) run are written to ``OUT/runs/<pair>_fold<F>_seed<S>/`` with a
``fingerprint.json`` of its settings, bundle configs, data and kvmonai version. A run whose ``result.json`` exists
and whose fingerprint matches is not redone, so an interrupted study continues where it stopped; a folder made with
other settings or data has its outputs moved to ``previous/<time>/`` (the log names what changed) and is trained
again. A failing run is recorded with its error and the others go on.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from kvmonai.bundle import bundle_workflow, device_overrides, study_recipe
from kvmonai.paths import bundle_name, bundles_dir, run_name
from kvmonai.study.fingerprint import STUDY_RUN_CONFIGS, data_fingerprint, evaluated, reusable, run_fingerprint
from kvmonai.study.tracking import finish_parent, parent_run, tag_child
from kvmonai.utils import write_text_atomic

__all__ = ["StudyConfig", "measure_paired_latency", "run_study"]

logger = logging.getLogger(__name__)


@dataclass
class StudyConfig:
    """What a study runs.

    Args:
        datalist: ``datalist.json`` written by ``kvmonai prepare``.
        out: result folder (``results/<name>``).
        pairs: ``(arch, attention)`` pairs.
        preset: network preset (default: the study recipe's, ``configs/study.json``).
        img_size: network input size (default: the recipe's).
        epochs: training epochs per run (default: the recipe's ``max_epochs``).
        folds: validation folds.
        seeds: seeds.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        bundles: folder holding the bundles.
        data_note: one line on the data, printed first in the report.
        synthetic: the data is the synthetic stand-in.
        overrides: further bundle overrides (e.g. ``{"slices_per_volume": 8}``).
        reference: also train the CNN reference (``unet_cnn``), reported in its own row.
        jobs: runs trained at the same time, in worker processes sharing the CPU threads (1: one after another).
        latency_repeats: timed rounds of the paired latency measurement after training.
        margin: the verdict's non-inferiority/equivalence margin (Jaccard units).
        alpha: 1 - the level of the verdict's intervals.
        verbose: runs print their logs to the terminal instead of ``runs/<run>/run.log``.
    """

    datalist: Path
    out: Path
    pairs: Sequence[tuple[str, str]]
    preset: str = field(default_factory=lambda: study_recipe()["preset"])
    img_size: int = field(default_factory=lambda: study_recipe()["img_size"])
    epochs: int = field(default_factory=lambda: study_recipe()["max_epochs"])
    folds: Sequence[int] = (0,)
    seeds: Sequence[int] = (0,)
    device: str = "cpu"
    bundles: Path = field(default_factory=bundles_dir)
    data_note: str = ""
    synthetic: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    reference: bool = True
    latency_repeats: int = 20
    jobs: int = 1
    verbose: bool = False
    margin: float = 0.01
    alpha: float = 0.05

    def run_dir(self, arch: str, attention: str, fold: int, seed: int) -> Path:
        """The folder of one run: ``out/runs/<arch>_<attention>_fold<F>_seed<S>``."""
        return (self.out / "runs" / run_name(arch, attention, fold, seed)).resolve()

    @property
    def name(self) -> str:
        return self.out.name

    @property
    def experiment(self) -> str:
        """The study's MLflow experiment."""
        return f"kvmonai-study-{self.name}"

    @property
    def tracking_uri(self) -> str:
        from monai.utils import path_to_sqlite_uri

        return os.environ.get("MLFLOW_TRACKING_URI") or path_to_sqlite_uri(str((self.out / "mlruns.db").resolve()))


def measure_paired_latency(
    cfg: StudyConfig, results: Sequence[dict[str, Any]], warmup: int = 3
) -> dict[tuple[str, str], dict[str, float]]:
    """Slice latency of every trained pair, timed side by side with its architecture's other attentions.

    Per architecture, the trained networks (first fold and seed) are timed round-robin (QKV, KV, KV+Pos, QKV, ...)
    with :func:`kvmonai.benchmark.timing.time_interleaved`, the method of ``kvmonai benchmark``, so a drift of the
    shared machine hits the twins alike and a KV row is not reported slower than its twin by noise. The ratio to
    the QKV twin is taken per round (paired).

    Returns:
        ``(arch, attention) -> {"latency_ms", "latency_iqr_ms", "latency_ratio", "latency_ratio_lo",
        "latency_ratio_hi"}``; the ratio (median, first and third quartile over the rounds) only where a QKV twin
        ran.
    """
    from kvmonai.benchmark.timing import forward_call, time_interleaved
    from kvmonai.networks import create, load_weights

    first: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        first.setdefault((r["arch"], r["attention"]), r)
    out: dict[tuple[str, str], dict[str, float]] = {}
    for arch in dict.fromkeys(a for a, _ in first):
        calls = {}
        for (a, attention), r in first.items():
            if a != arch:
                continue
            in_channels = int(r.get("in_channels", 3))
            net = create(arch, attention, cfg.preset, in_channels=in_channels, img_size=cfg.img_size)
            load_weights(net, Path(r["run_dir"]) / "model.pt")
            x = torch.randn(1, in_channels, cfg.img_size, cfg.img_size, device=cfg.device)
            calls[attention] = forward_call(net.to(cfg.device).eval(), x)
        timings = time_interleaved(calls, repeats=cfg.latency_repeats, warmup=warmup, device=cfg.device)
        for attention, timing in timings.items():
            entry = {"latency_ms": timing.median, "latency_iqr_ms": timing.iqr}
            if attention != "qkv" and "qkv" in timings:
                per_round = [x / y for x, y in zip(timing.times_ms, timings["qkv"].times_ms, strict=True)]
                q = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else per_round * 3
                entry.update(latency_ratio=statistics.median(per_round), latency_ratio_lo=q[0], latency_ratio_hi=q[2])
            out[(arch, attention)] = entry
    return out


def _run_one(
    cfg: StudyConfig, arch: str, attention: str, fold: int, seed: int, parent_id: str | None, fingerprint: dict
) -> dict:
    from kvmonai.networks import load_checkpoint

    name = bundle_name(arch, attention)
    run_dir = cfg.run_dir(arch, attention, fold, seed)
    bundle = cfg.bundles / name
    if not (bundle / "configs" / "train.json").is_file():
        raise FileNotFoundError(f"bundle {bundle} not found; run `kvmonai bundles`.")
    overrides = {
        "bundle_root": str(bundle.resolve()),
        "datalist": str(cfg.datalist.resolve()),
        "fold": fold,
        "seed": seed,
        "preset": cfg.preset,
        "img_size": cfg.img_size,
        "max_epochs": cfg.epochs,
        "output_dir": str(run_dir),
        "ckpt_dir": str(run_dir),
        "tracking_uri": cfg.tracking_uri,
        "experiment_name": f"kvmonai-study-{cfg.name}",
        **device_overrides(cfg.device),
        "num_workers": 0,
        "progress": cfg.verbose and cfg.jobs <= 1,  # else the study's own bar only
        **cfg.overrides,
    }
    # an earlier invocation may have left this folder: reuse it only if made with the same settings and data
    from kvmonai.bundle import RUN_OUTPUTS, move_aside

    if any((run_dir / n).exists() for n in (*RUN_OUTPUTS, "model.pt")):
        same, changes = reusable(run_dir, fingerprint)
        if not same:
            names = (*RUN_OUTPUTS, "fingerprint.json", "model.pt", "mlruns.db")
            moved = move_aside(run_dir, [run_dir / n for n in names])
            logger.warning(f"{run_dir.name}: earlier outputs made with other settings ({changes}); moved to {moved}")
    write_text_atomic(run_dir / "fingerprint.json", json.dumps(fingerprint, indent=2) + "\n")
    # an earlier, interrupted invocation may have left a checkpoint: continue it, or only evaluate if it finished
    ckpt = run_dir / "checkpoint_last.pt"
    done_epochs = load_checkpoint(ckpt)["epoch"] if ckpt.is_file() else 0
    start = time.perf_counter()
    train = bundle_workflow(bundle, STUDY_RUN_CONFIGS["train"], logging=False, **overrides, resume=done_epochs > 0)
    try:
        if done_epochs < cfg.epochs:
            train.run()
    finally:
        train.finalize()  # also releases the run folder's lock taken in initialize
    train_seconds = time.perf_counter() - start
    evaluate = bundle_workflow(bundle, STUDY_RUN_CONFIGS["evaluate"], logging=False, **overrides)
    try:
        evaluate.run()
    finally:
        evaluate.finalize()
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    settings = json.loads((run_dir / "run_settings.json").read_text())

    in_channels = int(train.parser.get_parsed_content("in_channels"))  # the bundle's 2.5D slice count
    result = {
        "arch": arch,
        "attention": attention,
        "fold": fold,
        "seed": seed,
        "params": settings["params"],
        "macs": settings["macs"],
        "in_channels": in_channels,
        "train_seconds": train_seconds,
        "jaccard": summary["jaccard"],
        "weighted_jaccard": summary["weighted_jaccard"],
        **{f"dice_{k}": v for k, v in summary["class_dice"]["skip"].items()},
        "dice": summary["competition"]["skip"]["dice"],
        "hausdorff": summary["competition"]["skip"]["hausdorff"],
        "score": summary["competition"]["skip"]["score"],
        "score_perfect": summary["competition"]["perfect"]["score"],
        "run_dir": str(run_dir),
    }
    tag_child(cfg.tracking_uri, cfg.experiment, run_dir.name, parent_id, result)
    write_text_atomic(run_dir / "result.json", json.dumps(result, indent=2) + "\n")
    return result


def _parent_params(cfg: StudyConfig) -> dict[str, Any]:
    """The study's settings as parameters of its MLflow parent run."""
    folds, seeds = ",".join(map(str, cfg.folds)), ",".join(map(str, cfg.seeds))
    datalist = str(cfg.datalist.resolve())
    return {"preset": cfg.preset, "epochs": cfg.epochs, "folds": folds, "seeds": seeds, "datalist": datalist,
            "synthetic": cfg.synthetic}  # fmt: skip


def _init_worker(threads: int) -> None:
    """Worker of a parallel study: its share of the cores, so the workers' OpenMP threads never oversubscribe."""
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _guarded_run(
    cfg: StudyConfig, arch: str, attention: str, fold: int, seed: int, parent_id: str | None, fingerprint: dict
) -> dict[str, Any]:
    """``{"result": ...}`` of one run, or ``{"failure": ...}`` with the error and its traceback (never raises)."""
    run_dir = cfg.run_dir(arch, attention, fold, seed)
    start = time.perf_counter()
    with nullcontext() if cfg.verbose else _output_to(run_dir / "run.log"):
        try:
            return {"result": _run_one(cfg, arch, attention, fold, seed, parent_id, fingerprint)}
        except Exception as e:
            failure = {"arch": arch, "attention": attention, "fold": fold, "seed": seed}
            traceback.print_exc()  # into run.log
            failure.update(error=_root_cause(e), traceback=traceback.format_exc(), seconds=time.perf_counter() - start)
            return {"failure": failure}


@contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so C libraries' output too) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as f:
        f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
        f.flush()
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _finished_line(job: tuple[str, str, int, int], outcome: dict[str, Any]) -> str:
    """One terminal line per finished run: pair, fold, seed, Jaccard and training time, or the error."""
    arch, attention, fold, seed = job
    head = f"{bundle_name(arch, attention)} fold {fold} seed {seed}:"
    if "failure" in outcome:
        log = f"runs/{run_name(arch, attention, fold, seed)}/run.log"
        return f"{head} FAILED: {outcome['failure']['error'][:200]} (log: {log})"
    r = outcome["result"]
    return f"{head} Jaccard {r['jaccard']:.3f}, trained in {r['train_seconds'] / 60:.1f} min"


def _root_cause(e: BaseException) -> str:
    """``Type: message`` of the innermost cause: MONAI wraps config errors as "Failed to evaluate ConfigExpression"."""
    chain = [e]
    while chain[-1].__cause__ is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__)
    inner = chain[-1]
    text = f"{type(inner).__name__}: {inner}"
    return text if inner is e else f"{text} (in {type(e).__name__}: {str(e).splitlines()[0][:120]})"


def run_study(cfg: StudyConfig, progress: bool = True) -> dict[str, Any]:
    """Run every (pair, fold, seed) not finished yet, then write the report.

    The runs go to ``cfg.jobs`` worker processes (one or more), each with its share of the CPU threads: small
    networks use two cores poorly within one process (per-operator threading overhead, Python-side transforms and
    handlers), so two single-threaded runs side by side finish sooner than two runs one after the other. Each run's
    output goes to ``runs/<run>/run.log`` (unless ``cfg.verbose``); the terminal shows the bar and one line per
    finished run.

    Returns:
        ``{"results": [...], "failures": [...], "report": path}``.
    """
    from kvmonai.networks import REFERENCES
    from kvmonai.networks import pairs as arch_pairs
    from kvmonai.study.report import write_report

    cfg.out.mkdir(parents=True, exist_ok=True)
    # also creates the MLflow store before any worker writes to it
    parent_id = parent_run(cfg.tracking_uri, cfg.experiment, cfg.name, _parent_params(cfg))

    pairs = list(cfg.pairs) + (arch_pairs(REFERENCES) if cfg.reference else [])
    jobs = [(a, t, f, s) for a, t in pairs for f in cfg.folds for s in cfg.seeds]
    outcomes: dict[int, dict[str, Any]] = {}
    todo = []
    data = data_fingerprint(cfg.datalist)  # once per study: it stats every volume
    fingerprints = [run_fingerprint(cfg, *job, data=data) for job in jobs]
    for i, (arch, attention, fold, seed) in enumerate(jobs):
        run_dir = cfg.run_dir(arch, attention, fold, seed)
        done = run_dir / "result.json"
        if done.is_file() and reusable(run_dir, fingerprints[i])[0] and evaluated(run_dir):
            outcomes[i] = {"result": json.loads(done.read_text())}
        else:
            todo.append(i)
    bar = tqdm(total=len(jobs), initial=len(outcomes), desc=f"study {cfg.name}", unit="run", disable=not progress)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # always worker processes, even one: each run's output (MONAI's and ignite's logs, warnings) goes to its own
    # folder's run.log at the file-descriptor level, while this process keeps the terminal for the bar
    workers = max(1, cfg.jobs)
    threads = max(1, torch.get_num_threads() // workers)
    context = multiprocessing.get_context("spawn")  # no forked OpenMP or MLflow state
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(_guarded_run, cfg, *jobs[i], parent_id, fingerprints[i]): i for i in todo}
        for future in as_completed(futures):
            i = futures[future]
            outcomes[i] = future.result()
            if progress:
                bar.write(_finished_line(jobs[i], outcomes[i]))
            bar.update()
    bar.close()
    results = [outcomes[i]["result"] for i in sorted(outcomes) if "result" in outcomes[i]]
    failures = [outcomes[i]["failure"] for i in sorted(outcomes) if "failure" in outcomes[i]]
    if results:
        if progress:
            print(f"paired latency of {len(results)} trained networks ({cfg.latency_repeats} rounds)", flush=True)
        try:
            latency = measure_paired_latency(cfg, results)
            results = [{**r, **latency.get((r["arch"], r["attention"]), {})} for r in results]
        except Exception as e:  # a timing problem must not lose the trained results
            logger.error(f"latency measurement failed: {e}")
    report = write_report(cfg, results, failures)
    if parent_id is not None:
        finish_parent(cfg.tracking_uri, parent_id, cfg.out, failed=bool(failures))
    return {"results": results, "failures": failures, "report": report}
