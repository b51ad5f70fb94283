"""benchmarks/bench_logprobs.py at toy sizes: it runs end to end (the --gpu mode too, on CPU), its table has every
cell, and the baseline comparison flags a slowdown of more than 20 % and nothing less. No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_logprobs", ROOT / "benchmarks" / "bench_logprobs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_logprobs"] = module
    spec.loader.exec_module(module)
    return module


def _run(bench: ModuleType, args: list[str]) -> int:
    code: int = bench.main(args)
    if code == 2:
        pytest.skip("the peers' wheels cannot be fetched (offline)")
    return code


@pytest.mark.parametrize("mode", [[], ["--gpu", "--device", "cpu"]], ids=["cpu", "gpu-mode-on-cpu"])
def test_benchmark_runs_and_reports_every_cell(tmp_path: Path, mode: list[str]) -> None:
    bench = _bench()
    out = tmp_path / "run.json"
    args = [*mode, "--shape", "2,3,17", "--rounds", "1", "--min-time", "0", "--no-memory", "--json", str(out)]
    assert _run(bench, args) == 0
    result = json.loads(out.read_text())
    dtypes = ["bfloat16"] if mode else ["float32", "bfloat16"]
    cells = {(r["dtype"], r["op"], r["mode"]) for r in result["rows"]}
    assert cells == {(d, op, m) for d in dtypes for op in bench.OPS for m in ("fwd", "fwd+bwd")}
    assert result["peers"] == ["TRL 1.16.0", "verl 0.9.1", "OpenRLHF 0.11.2"]
    for row in result["rows"]:
        assert set(row["ms"]) >= {"torch_impl", *result["peers"]}
        fastest = min(row["ms"][p] for p in result["peers"])
        assert row["time_ratio"] == pytest.approx(row["ms"]["torch_impl"] / fastest)
    for row in result["rows"]:  # the compiled kernels' baseline: torch_impl with them off, in the same run
        assert ("default_vs_eager" in row) == (row["op"] == "logprobs")
    assert "ours / fastest peer" in bench.table(result) and "/ torch_impl (eager)" in bench.table(result)


def test_peak_memory_of_one_cell_is_measured_against_the_floor() -> None:
    """One cell measured as the benchmark does (a fresh process) at a size where the gradient dominates: above
    the floor, below a second full-size float32 tensor."""
    bench = _bench()
    try:
        bench._by_name("torch_impl")
    except bench.AuditUnavailable:
        pytest.skip("the peers' wheels cannot be fetched (offline)")
    shape = (2, 256, 8192)  # a 16 MiB gradient against 2 MiB chunk buffers
    import torch

    peak = bench.peak_memory("torch_impl", "both", "cpu", "float32", shape, True)
    floor = bench.memory_floor("both", torch.float32, shape, True)
    assert floor == 2 * 256 * 8192 * 4 + 2 * 2 * 256 * 4
    # resident-set growth counts pages: allow the allocator's slack, but not a second full-size float32 tensor
    assert 0.9 * floor < peak < 1.5 * floor, (peak, floor)


def test_baseline_comparison_flags_only_a_slowdown_above_20_percent() -> None:
    bench = _bench()

    def result(ratios: list[float]) -> dict[str, object]:
        keys = [("float32", "logprobs", "fwd"), ("bfloat16", "entropy", "fwd+bwd"), ("float32", "both", "fwd")]
        return {
            "rows": [
                {"dtype": d, "op": o, "mode": m, "time_ratio": r} for (d, o, m), r in zip(keys, ratios, strict=True)
            ]
        }

    baseline = result([0.5, 0.8, 0.4])
    assert bench.compare(result([0.59, 0.95, 0.2]), baseline) == []  # +18 %, +18.75 %, faster
    flagged = bench.compare(result([0.61, 0.8, 0.4]), baseline)  # +22 %
    assert len(flagged) == 1 and flagged[0].startswith("float32 logprobs fwd: ours/fastest peer 0.61, baseline 0.50")
