"""The Ray Data engine of ``onnxcam explain``: the local batch job (:mod:`onnxcam.batch`) spread over a Ray cluster.

Install with ``pip install onnxcam[ray]``; Ray is imported only when :func:`explain_dataset` runs.

The driver plans the job, skips the done inputs (``resume``), keeps its shard and appends the log exactly like the
local engine (:func:`onnxcam.batch.run_jobs`). The jobs become a Ray dataset (``ray.data.from_items``) mapped in
batches by a pool of actors, each holding one :class:`~onnxcam.explainer.Explainer` (one onnxruntime session, on the
CPU or on one GPU). An actor decodes (:func:`onnxcam.images.read_image`), explains and writes the artefacts
(atomically) with the local engine's own functions, then returns the batch's records; the driver appends them to the
log as batches finish. Records, artefacts and error lines are those of the local engine; only the line order may
differ.

On a cluster, the model, the inputs and the output directory must be paths every node sees (a shared filesystem).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .batch import (
    BatchOptions,
    BatchUsageError,
    Emit,
    Job,
    OnResult,
    Settings,
    Summary,
    artefact_names,
    decode,
    open_explainer,
    prepare,
    process_batch,
    run_jobs,
)
from .explainer import Explainer
from .inputs import InputItem
from .outputs import atomic_write, read_json_lines


class ExplainActor:
    """A Ray actor: one :class:`Explainer`, turning batches of jobs into artefacts and records.

    A batch has the columns ``path`` (absolute, to read), ``input`` (as given, for the record), ``name`` and
    ``error`` (``""`` or why the input yields no image); the result has one column ``record`` (JSON text).
    """

    def __init__(self, model: str, provider: str, threads: int, settings: Settings, out_dir: str) -> None:
        self.explainer = Explainer(model, provider=provider, threads=threads)
        self.settings = settings
        self.out = Path(out_dir)
        self.pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="onnxcam-io")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        jobs = ray_jobs(batch, self.settings)
        read = partial(
            decode,
            spec=self.explainer.preprocess,
            max_pixels=self.settings.max_pixels,
            max_side=self.settings.max_side,
            keep_size=self.settings.keep_size,
        )
        decoded = list(self.pool.map(read, jobs))
        futures = process_batch(self.explainer, decoded, self.settings, self.out, self.pool)
        records = []
        for future, given in zip(futures, batch["input"], strict=True):
            record = future.result()
            record["input"] = str(given)
            records.append(json.dumps(record))
        return {"record": np.array(records, dtype=object)}


def job_rows(jobs: Sequence[Job]) -> list[dict[str, str]]:
    """The dataset rows of ``jobs`` (see :class:`ExplainActor`)."""
    return [
        {
            "path": str(job.item.path.absolute()),
            "input": str(job.item.path),
            "name": job.name,
            "error": job.item.error or "",
        }
        for job in jobs
    ]


def ray_jobs(batch: dict[str, np.ndarray], settings: Settings) -> list[Job]:
    """The jobs of a batch of :func:`job_rows` rows, reading from the absolute paths."""
    return [
        Job(
            InputItem(Path(str(path)), str(error) or None),
            str(name),
            artefact_names(str(name), settings.methods, settings.save),
        )
        for path, name, error in zip(batch["path"], batch["name"], batch["error"], strict=True)
    ]


def explain_dataset(
    model: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    options: BatchOptions | None = None,
    *,
    address: str | None = None,
    num_actors: int = 2,
    num_cpus_per_actor: float = 1.0,
    num_gpus_per_actor: float = 0.0,
    threads: int | None = None,
    parquet: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_result: OnResult | None = None,
) -> Summary:
    """Explain ``inputs`` into ``out_dir`` on Ray: same options, artefacts and ``results.jsonl`` as
    :func:`onnxcam.batch.run_batch`.

    ``address``: the cluster to join (``"auto"``, ``"ray://head:10001"``…); ``None`` joins the Ray instance this
    process already started, else starts a local one. ``num_actors`` actors each hold one onnxruntime session with
    ``threads`` intra-op threads (default: ``num_cpus_per_actor``), on one GPU share when ``num_gpus_per_actor > 0``
    (the CUDA provider), else on the CPU. ``parquet``: also write the log as ``results.parquet`` (same stem) at the end.
    Usage mistakes raise :class:`~onnxcam.batch.BatchUsageError` before any image is read.
    """
    try:
        import ray
        import ray.data
    except ImportError:
        raise BatchUsageError("the ray engine needs Ray Data: pip install 'onnxcam[ray]'", "--engine") from None
    if num_actors < 1:
        raise BatchUsageError(f"must be at least 1, got {num_actors}", "--actors")
    settings = prepare(options or BatchOptions(), open_explainer(model, "cpu", 1))
    actor_args = {
        "model": str(Path(model).absolute()),
        "provider": "cuda" if num_gpus_per_actor > 0 else "cpu",
        "threads": threads or max(1, int(num_cpus_per_actor)),
        "settings": settings,
    }

    def engine(jobs: Sequence[Job], out: Path, emit: Emit) -> None:
        if not jobs:
            return
        dataset = ray.data.from_items(job_rows(jobs)).map_batches(
            ExplainActor,
            fn_constructor_kwargs={**actor_args, "out_dir": str(out.absolute())},
            batch_size=settings.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=num_actors),
            num_cpus=num_cpus_per_actor,
            num_gpus=num_gpus_per_actor,
        )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            emit([json.loads(text) for text in batch["record"]])

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address)
    try:
        summary = run_jobs(settings, inputs, out_dir, engine, on_start=on_start, on_result=on_result)
    finally:
        if started_here:
            ray.shutdown()
    if parquet:
        write_parquet(summary.results)
    return summary


def write_parquet(results: Path) -> Path:
    """Write the valid records of the JSON-lines log ``results`` as Parquet next to it (``.parquet``), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records: list[dict[str, Any]] = [r for _, r in read_json_lines(results) if r is not None]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buffer)
    target = results.with_suffix(".parquet")
    atomic_write(target, buffer.getvalue())
    return target
