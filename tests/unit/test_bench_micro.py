"""The micro-benchmarks: present for each hot-path function, run by one
command, and kept out of the default test run. Nothing is timed here."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MICRO = REPO / "bench" / "micro"


def test_micro_benchmarks_stay_out_of_the_default_test_run():
    ini = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    for path in ini["testpaths"]:
        collected = (REPO / path).resolve()
        # Neither the micro folder, nor one of its parents, nor inside it.
        assert collected not in (MICRO, *MICRO.parents), path
        assert MICRO not in collected.parents, path
    patterns = ini.get("python_files", ["test_*.py", "*_test.py"])
    micro = sorted(MICRO.glob("bench_*.py"))
    assert [m.stem for m in micro] == ["bench_admission", "bench_head", "bench_line",
                                       "bench_routing"]
    for path in micro:
        assert not any(Path(path.name).match(p) for p in patterns), path


def test_each_hot_path_function_is_benchmarked_beside_its_reference():
    """Routing, head serialization, token bucket and scheduler enqueue/dequeue."""
    wanted = {
        "bench_routing": {"test_route_exact", "test_route_wildcard",
                          "test_classify_default_classes"},
        "bench_head": {"test_request_serialize", "test_response_serialize"},
        "bench_admission": {"test_bucket_try_take", "test_scheduler_enqueue_dequeue"},
        "bench_line": {"test_line_draw", "test_line_poll", "test_line_expire",
                       "test_redis_sync"},
    }
    for module, names in wanted.items():
        tree = ast.parse((MICRO / f"{module}.py").read_text())
        found = {
            node.name for node in tree.body
            if isinstance(node, ast.FunctionDef)
            # Parametrized over the native module and its plain-Python reference.
            and any(isinstance(d, ast.Name) and d.id.endswith("IMPLS")
                    for d in node.decorator_list)
        }
        assert names <= found, (module, names - found)


def test_one_command_runs_them_all():
    main = (MICRO / "__main__.py").read_text()
    assert "--benchmark-only" in main and "python_files=bench_*.py" in main
