"""Command line: ``trtq build JOB.yaml``, ``trtq inspect MODEL.onnx``.

User errors print one line and exit 2 with no traceback; Ctrl-C likewise, leaving nothing behind.
"""

from __future__ import annotations

import argparse
import errno
import math
import signal
import sys
from pathlib import Path

from .artifacts import Terminated, sigterm_raises
from .errors import TrtqError


def _console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:  # logs and pipes: wide enough for the tables
        console = Console(stderr=stderr, highlight=False, width=120)
    return console


def _cmd_build(args) -> int:
    from .job import load_job
    from .pipeline.build import build
    from .progress import Progress, RichProgress
    from .report.writer import headline_rows

    job = load_job(args.job, args.set or [])
    err = _console(stderr=True)
    progress = Progress() if args.quiet else RichProgress(err)
    result = build(job, Path(args.out).resolve() if args.out else None, progress, reuse=not args.force)
    _print_summary(result, headline_rows(result.report))
    return 0


def _print_summary(result, rows, verb: str = "build") -> None:
    from rich.table import Table

    out = _console()
    rep = result.report
    cal = rep["calibration"]
    table = Table(title=f"trtq {verb} {rep['job']['name']} → {result.out_dir}", title_justify="left")
    for col in ("metric", "FP32", "INT8", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    table.add_row("calibration", "", f"{cal['method']['method']}, {cal['samples']} samples", f"{cal['seconds']:.1f} s")
    if cal.get("cache_header"):
        table.add_row("cache header", "", cal["cache_header"]["header"], "")
    kernels = rep.get("engine", {}).get("kernels")
    if kernels:
        table.add_row("weighted ops INT8 / FP32", "", f"{kernels['int8_weighted']} / {kernels['fp32_weighted']}", "")
    for row in rows:
        table.add_row(*row)
    out.print(table)
    for w in rep.get("warnings", []):
        out.print(f"⚠ {w}", style="bold yellow", markup=False, soft_wrap=True)
    out.print("artifacts: " + ", ".join(rep["artifacts"]))
    if cal.get("cache_header"):
        out.print(f"calibration.cache header {cal['cache_header']['header']}: {cal['cache_header']['from']}",
                  soft_wrap=True)
    if rep.get("engine", {}).get("built") is False:
        from .report.writer import not_built_lines

        for line in not_built_lines(rep["engine"]):
            out.print(line, soft_wrap=True, markup=False)  # commands stay on one line, to copy


def _cmd_eval(args) -> int:
    from .job import load_job
    from .pipeline.reevaluate import reevaluate
    from .progress import Progress, RichProgress
    from .report.writer import headline_rows

    job = load_job(args.job, args.set or [])
    progress = Progress() if args.quiet else RichProgress(_console(stderr=True))
    result = reevaluate(job, Path(args.out).resolve() if args.out else None, progress)
    _print_summary(result, headline_rows(result.report), verb="eval")
    return 0


def _parse_shapes(items) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for item in items or []:
        name, sep, dims = item.rpartition(":")
        try:
            shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            sep = ""
        if not sep or not name:
            raise TrtqError(f"--shape {item!r}: expected NAME:1x3x224x224")
    return shapes


def _cmd_bench(args) -> int:
    from rich.table import Table

    from .evaluation.bench import bench

    result = bench(Path(args.model), args.batch, args.warmup, args.iterations, args.duration, args.threads,
                   _parse_shapes(args.shape))
    m = result["machine"]
    table = Table(title=f"{args.model} — onnxruntime {m['onnxruntime']}, {m['cpu']}, "
                        f"threads {args.threads or 'default'}", title_justify="left")
    for col in ("batch", "iters", "min", "mean", "p50", "p90", "p95", "p99", "max", "CV", "per s"):
        table.add_column(col, justify="right")
    for bs, st in result["by_batch"].items():
        table.add_row(bs, str(st["iterations"]), *(f"{st[k]:.3f}" for k in ("min_ms", "mean_ms", "p50_ms", "p90_ms",
                      "p95_ms", "p99_ms", "max_ms")), f"{100 * st['cv']:.1f} %" + (" ⚠" if st["unstable"] else ""),
                      f"{st['throughput_per_s']:.1f}")
    out = _console()
    out.print(table)
    out.print("latencies in ms; ⚠: coefficient of variation above 5 %, the machine was noisy")
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _cmd_inspect(args) -> int:
    from rich.table import Table

    from .model.prepare import prepare

    prepared = prepare(Path(args.model))
    plan = prepared.plan
    out = _console()
    if args.json:
        import json

        print(json.dumps(_inspect_doc(prepared), indent=2))
        return 0
    for spec in prepared.inputs:
        out.print(f"input  {spec.name}: {spec.dtype} {['?' if d is None else d for d in spec.shape]}")
    for name in prepared.outputs:
        out.print(f"output {name}")
    pre = prepared.prequantized
    if pre is not None:
        asym = sum(not a.symmetric_int8 for a in pre.activations.values())
        out.print(f"pre-quantized: {len(pre.activations)} activation Q/DQ ({asym} asymmetric), {len(pre.weights)} "
                  "int8 weights — built with these scales and weights, calibration optional")
    table = Table(title=f"{len(plan.nodes)} weighted ops trtq quantizes")
    for col in ("node", "op", "activation", "weight", "axis"):
        table.add_column(col, overflow="fold")  # whole names, to paste into exclude_nodes
    for q in plan.nodes:
        table.add_row(q.node, q.op_type, q.activation, q.weight, str(q.axis))
    out.print(table)
    for node, why in plan.excluded:
        out.print(f"not quantized: {node} ({why})")
    for node, count in plan.in_subgraphs.items():
        out.print(f"not quantized: {count} weighted op(s) inside the subgraphs of {node} (control flow)")
    return 0


def _inspect_doc(prepared) -> dict:
    plan = prepared.plan
    return {"model": str(prepared.path),
            "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": str(i.dtype), "batch_axis": i.batch_axis}
                       for i in prepared.inputs],
            "outputs": prepared.outputs,
            "quantized": [{"node": q.node, "op": q.op_type, "activation": q.activation, "weight": q.weight,
                           "axis": q.axis} for q in plan.nodes],
            "not_quantized": [{"node": n, "reason": why} for n, why in plan.excluded],
            "in_subgraphs": plan.in_subgraphs,
            "prequantized": None if prepared.prequantized is None else {
                "activations": len(prepared.prequantized.activations), "int8_weights": len(prepared.prequantized.weights),
                "asymmetric": sum(not a.symmetric_int8 for a in prepared.prequantized.activations.values())}}


def _cmd_cache(args) -> int:
    from .calib import cache as trt_cache
    from .pipeline import convert

    out = _console()
    if args.cache_command == "show":
        c = convert.read_cache(Path(args.cache))
        out.print(f"TensorRT {c.version}, {c.algorithm}, {len(c.scales)} tensors", markup=False)
        for name, scale in c.scales.items():  # names literally: '[...]' is not markup, ':word:' not an emoji
            bits = "" if math.isnan(scale) else f"  ({trt_cache.encode_scale(scale)})"  # a NaN's payload is not kept
            out.print(f"{name}: scale {scale:.9g}  amax {scale * 127:.6g}{bits}", markup=False, emoji=False,
                      highlight=False, soft_wrap=True)
        return 0
    if args.cache_command == "to-qdq":
        model = Path(args.model)
        dest = Path(args.output) if args.output else model.with_name(model.stem + ".int8.onnx")
        if dest.resolve() == model.resolve():
            raise TrtqError(f"-o {dest}: would overwrite the input model; choose another path")
        info = convert.cache_to_qdq(model, Path(args.cache), dest)
        out.print(f"wrote {dest}: {info['tensors']} quantized tensors"
                  + (f" ({info['unused_cache_entries']} cache entries not used by this model)" if info["unused_cache_entries"] else ""))
        if info["zero_scales"]:
            out.print(f"note: {len(info['zero_scales'])} tensor(s) have a zero scale in the cache (a zero range) and "
                      f"get amax 1, which quantizes zeros exactly: {', '.join(info['zero_scales'][:5])}", markup=False)
        return 0
    model = Path(args.model)
    dest = Path(args.output) if args.output else model.with_name(model.stem + ".cache")
    version = args.cache_version
    if version is None:
        from .engine import tensorrt as trt_engine
        from .job import CalibratorSpec

        version = trt_engine.cache_version(CalibratorSpec(), trt_engine.installed_version())[0]
    info = convert.qdq_to_cache(model, dest, version, args.algorithm)
    out.print(f"wrote {dest}: {info['tensors']} tensors, header TRT-{version}-{args.algorithm}")
    return 0


def _cmd_run(args) -> int:
    from rich.table import Table

    from .runs import run as runner
    from .runs.sweep import load_jobs

    jobs = load_jobs(args.paths, args.set or [])
    out_root = Path(args.out).resolve() if args.out else None
    err = _console(stderr=True)
    if args.ray:
        from .runs.ray_cluster import RayExecutor

        executor = RayExecutor(args.ray, args.ray_cpus, args.ray_shared)
    else:
        executor = runner.LocalExecutor(args.workers)
    say = (lambda s: None) if args.quiet else (lambda s: err.print(s, markup=False, highlight=False))
    say(f"{len(jobs)} job(s); " + (f"Ray at {args.ray}" if args.ray else f"{executor.workers} build worker(s), "
                                  "evaluations one at a time"))
    items = runner.run(jobs, out_root, args.force, executor, say=say)
    doc = runner.summary(items)
    folder = out_root or Path(jobs[0][1].output)
    runner.write_summary(doc, folder)
    table = Table(title=f"trtq run → {folder}/{runner.SUMMARY_MD}", title_justify="left")
    for i, col in enumerate(runner.SUMMARY_COLUMNS):
        table.add_column(col, justify="left" if i < 5 else "right")
    for r in doc["jobs"]:
        table.add_row(*runner.summary_cells(r))
    out = _console()
    out.print(table)
    failed = [r for r in doc["jobs"] if r["status"] == "failed"]
    for r in failed:
        print(f"trtq: {r['job']} failed: {r['error']}", file=sys.stderr)
    return min(len(failed), 100)


def _cmd_doctor(args) -> int:
    import functools

    from .engine.tensorrt import doctor

    facts = doctor()
    if args.json:
        import json

        print(json.dumps(facts, indent=2))
        return 0
    out = _console()
    out.print = functools.partial(out.print, markup=False)  # TensorRT's hints contain 'trtq[tensorrt-cu12]'
    out.print(f"onnxruntime {facts['onnxruntime']}, providers: {', '.join(facts['onnxruntime_providers'])}")
    out.print(f"TensorRT: {facts['tensorrt'] or 'not available — ' + facts['tensorrt_error']}")
    out.print(f"CUDA binding: {facts['cuda_binding'] or 'none'}")
    gpu = facts["gpu"]
    out.print("GPU: " + (f"{gpu['name']} (compute capability {gpu['compute_capability']}, {gpu['memory_mb']} MB, "
                         f"driver CUDA {gpu['driver']})" if gpu else f"none — {facts['gpu_error']}"))
    out.print("this machine can build: " + "; ".join(facts["allows"]))
    return 0


class _Help(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; every option that has a default shows it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" not in text and action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            text += " (default: %(default)s)"
        return text


JOB_REFERENCE = "every job key: docs/job-reference.md; the report: docs/report-schema.md"


def _command(sub, name: str, summary: str, examples: str, func) -> argparse.ArgumentParser:
    """A subcommand with a description, its examples and the pointer to the job reference."""
    c = sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".",
                       epilog="examples:\n" + examples + "\n\n" + JOB_REFERENCE, formatter_class=_Help)
    c.set_defaults(func=func)
    return c


def _job_options(c, out_help: str) -> None:
    c.add_argument("job", help="the job's YAML file")
    c.add_argument("--set", action="append", metavar="KEY.PATH=VALUE",
                   help="override a job key, e.g. --set calibration.path=../data (repeatable)")
    c.add_argument("--out", help=out_help)
    c.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def make_parser() -> argparse.ArgumentParser:  # long but flat: one declarative block per command
    from . import __version__

    p = argparse.ArgumentParser(prog="trtq", description="INT8 deployment pipeline for TensorRT and ONNX Runtime: "
                                "calibrate, write the Q/DQ model and the TensorRT cache, build and evaluate.",
                                epilog="examples:\n  trtq build configs/efficientnet_lite0.yaml\n  trtq doctor\n\n"
                                "'trtq COMMAND --help' shows each command's options and examples;\n" + JOB_REFERENCE,
                                formatter_class=_Help)
    p.add_argument("--version", action="version", version=f"trtq {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    b = _command(sub, "build", "calibrate, quantize, build and evaluate one job",
                 "  trtq build job.yaml\n  trtq build job.yaml --set calibration.max_samples=64 --out /tmp/engines",
                 _cmd_build)
    _job_options(b, "output root (default: the job's 'output', else ./engines)")
    b.add_argument("--force", action="store_true", help="collect calibration statistics again even if stored ones match")
    e = _command(sub, "eval", "evaluate an existing build again (accuracy, per-layer error, latency)",
                 "  trtq eval job.yaml\n  trtq eval job.yaml --set evaluation.max_samples=100", _cmd_eval)
    _job_options(e, "output root the job was built into (default: the job's 'output')")
    bn = _command(sub, "bench", "latency of one ONNX model on ONNX Runtime, trtexec-style",
                  "  trtq bench model.onnx --batch 1 8\n  trtq bench model.onnx --shape input:1x3x224x224 --threads 4",
                  _cmd_bench)
    bn.add_argument("model", help="the ONNX model to time (for a TensorRT engine use trtexec --loadEngine)")
    bn.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes")
    bn.add_argument("--warmup", type=int, default=10, help="untimed runs per batch size")
    bn.add_argument("--iterations", type=int, default=100, help="timed runs per batch size")
    bn.add_argument("--duration", type=float, help="seconds to keep timing after the iterations")
    bn.add_argument("--threads", type=int, help="intra-op threads (default: onnxruntime's choice)")
    bn.add_argument("--shape", action="append", metavar="NAME:DIMS", help="shape for dynamic inputs, e.g. input:1x3x224x224")
    bn.add_argument("--json", help="also write the statistics to this file")
    i = _command(sub, "inspect", "list a model's inputs and the ops trtq would quantize",
                 "  trtq inspect model.onnx\n  trtq inspect model.onnx --json", _cmd_inspect)
    i.add_argument("model", help="the ONNX model")
    i.add_argument("--json", action="store_true", help="print it as JSON (full node names, for scripts)")
    c = _command(sub, "cache", "read, convert and write TensorRT calibration caches",
                 "  trtq cache show calibration.cache\n  trtq cache to-qdq model.onnx calibration.cache -o model.int8.onnx\n"
                 "  trtq cache from-qdq model.int8.onnx --cache-version 100300", _cmd_cache)
    csub = c.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    show = csub.add_parser("show", help="decode a cache: tensor, scale, amax", formatter_class=_Help)
    show.add_argument("cache", help="a TensorRT calibration cache (TRT-<version>-<algorithm> header)")
    to = csub.add_parser("to-qdq", help="write a Q/DQ model of MODEL from the ranges in CACHE", formatter_class=_Help)
    to.add_argument("model", help="the FP32 ONNX model the cache was made for")
    to.add_argument("cache", help="its TensorRT calibration cache")
    to.add_argument("-o", "--output", help="default: <model>.int8.onnx beside the model")
    fr = csub.add_parser("from-qdq", help="write the TensorRT cache of a Q/DQ model", formatter_class=_Help)
    fr.add_argument("model", help="a Q/DQ ONNX model such as model.int8.onnx")
    fr.add_argument("-o", "--output", help="default: <model>.cache beside the model")
    fr.add_argument("--cache-version", help="the TensorRT version number in the header (default: the installed "
                    "TensorRT's, else 8601)")
    fr.add_argument("--algorithm", default="EntropyCalibration2",
                    choices=["EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration"],
                    help="the calibrator named in the header")
    r = _command(sub, "run", "build many jobs (files, folders, sweeps) incrementally, locally or on Ray",
                 "  trtq run configs/sweeps\n  trtq run a.yaml b.yaml --workers 2 --out /tmp/engines\n"
                 "  trtq run configs/sweeps --ray auto", _cmd_run)
    r.add_argument("paths", nargs="+", help="job files and folders of job files")
    r.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a key in every job (repeatable)")
    r.add_argument("--out", help="output root for every job (default: each job's 'output'); summary.md goes here")
    r.add_argument("--force", action="store_true", help="rebuild and re-evaluate even what is up to date")
    r.add_argument("--workers", type=int, help="parallel builds (default: one per two cores, at most 4)")
    r.add_argument("--ray", metavar="ADDRESS", help="run on Ray: 'local', 'auto' or a cluster address")
    r.add_argument("--ray-cpus", type=int, default=1, help="CPUs each Ray build task asks for")
    r.add_argument("--ray-shared", action="store_true",
                   help="the output root is on a filesystem every Ray node mounts: tasks write there directly "
                        "(default: artifacts come back to the driver)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    d = _command(sub, "doctor", "what this machine has (TensorRT, CUDA, GPU, onnxruntime) and what it can build",
                 "  trtq doctor\n  trtq doctor --json", _cmd_doctor)
    d.add_argument("--json", action="store_true", help="print the facts as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # 'trtq' alone: the help, not an argparse error
        parser.print_help()
        return 2
    try:
        with sigterm_raises():
            return args.func(args)
    except TrtqError as exc:
        print(f"trtq: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("trtq: interrupted; no partial output was left behind", file=sys.stderr)
        return 2
    except Terminated:
        print("trtq: terminated (SIGTERM); no partial output was left behind", file=sys.stderr)
        return 128 + signal.SIGTERM
    except OSError as exc:  # a write trtq does not route through artifacts.write_atomic (a library's own)
        if exc.errno != errno.ENOSPC:
            raise
        print(f"trtq: error: {exc.filename or 'output'}: no space left on device; free some space or choose "
              "another folder with --out", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
