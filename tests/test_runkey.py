"""The run key means what it says (cnnlab.config.code, cnnlab.config.machine): it changes when something that can
change the trained numbers changes (a line the model runs, the CPU's instruction-set level, the thread count, op
determinism) and not otherwise (a docstring or comment, a layer the project does not use, a new setting left
unset). A finished run is reused exactly when the key is the same (tests/test_train.py shows that reuse), so these
are the retrain-or-reuse decisions."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest

from cnnlab.config.code import CodeBase, strings
from cnnlab.config.errors import ConfigError
from cnnlab.config.machine import bf16_is_fast, bf16_is_fast_here, compute_platform, cpu_info, isa_level, op_determinism
from cnnlab.config.settings import result_key, settings, without_unset
from tests.conftest import ROOT, compose_config, job_command, job_env
from tests.support import pipeline_projects

SRC = ROOT / "src" / "cnnlab"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A copy of the cnnlab package's source, to edit."""
    copy = tmp_path / "cnnlab"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@cache
def setting_strings(project: str) -> tuple[str, ...]:
    """The strings of a project's settings (composed once per test process: they do not depend on the source)."""
    return tuple(strings(settings(compose_config(f"project={project}"))))


def digests(src: Path, projects: Iterable[str]) -> dict[str, str]:
    """Each project's code digest over the source under `src`, read and parsed once."""
    code = CodeBase.read(src)
    return {p: code.digest(setting_strings(p)) for p in projects}


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} is not in {path}: the test needs updating"
    path.write_text(text.replace(old, new, 1))


def test_a_docstring_or_comment_edit_in_core_changes_no_key(source: Path) -> None:
    before = digests(source, ("p00", "p07", "p11", "p12"))
    edit(source / "core" / "loop.py", '"""The training loop:', '"""The training loop (edited):')
    edit(source / "core" / "loop.py", "def epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:\n",
         "def epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:  # a new comment\n")
    edit(source / "core" / "layers.py", "Identity at inference.", "Identity at inference (reworded).")
    edit(source / "core" / "generator.py", "from keras import ops\n", "from keras import ops  # comment\n")
    assert digests(source, before) == before


def test_a_new_layer_changes_only_the_keys_of_projects_that_use_it(source: Path) -> None:
    before = digests(source, ("p00", "p07", "p11", "p12"))
    with (source / "core" / "layers.py").open("a") as f:
        f.write('\n\n@custom_layer\nclass Doubling(keras.layers.Layer):\n'
                '    def call(self, x):\n        return x * 2\n')
    assert digests(source, before) == before, "no project names Doubling"
    code = CodeBase.read(source)
    named = settings(compose_config("project=p07", "+model.layers=[{type: Doubling}]"))
    assert code.digest(strings(named)) != CodeBase.read(SRC).digest(strings(named)), "a project that names it"


def test_a_changed_line_the_model_runs_changes_the_key(source: Path) -> None:
    base = digests(source, ("p00", "p07", "p11", "p12"))
    edit(source / "core" / "loop.py", "np.random.default_rng([seed, epoch])", "np.random.default_rng([seed, epoch, 1])")
    changed = digests(source, base)
    assert all(changed[p] != base[p] for p in base), "every project runs the epoch order"


def test_a_change_to_a_layer_retrains_exactly_the_projects_that_name_it(source: Path) -> None:
    base = digests(source, ("p00", "p07", "p11", "p12"))
    edit(source / "core" / "layers.py", "positions = ops.arange(size)[None, :] + offsets",
         "positions = ops.arange(size)[None, :] + offsets * 1")
    changed = digests(source, base)
    assert changed["p12"] != base["p12"], "P12's augmentation is RandomPadShift"
    assert [p for p in base if changed[p] != base[p]] == ["p12"]
    edit(source / "core" / "generator.py", "FILL_MODES", "FILL_MODES_RENAMED")
    assert digests(source, ["p11"])["p11"] != changed["p11"], "P11 runs the ImageDataGenerator layers"
    assert digests(source, ["p07"])["p07"] == changed["p07"]


SEED_PROJECTS = tuple(p for p in pipeline_projects() if p != "p12")  # the seed table, P11 two ways (not P12)


def test_p12s_recipe_changes_no_seed_projects_key_and_p12_reaches_it(source: Path) -> None:
    with_recipe = digests(source, (*SEED_PROJECTS, "p12"))
    (source / "core" / "recipe.py").unlink()
    edit(source / "core" / "models.py",
         "import cnnlab.core.recipe  # noqa: F401  (registers P12's recipe pieces)\n", "")
    without = digests(source, SEED_PROJECTS)
    assert without == {p: with_recipe[p] for p in SEED_PROJECTS}, "P12's pieces are reached by no seed project"
    code = CodeBase.read(SRC)
    reached = code.reached(code.roots | code.named(strings(settings(compose_config("project=p12")))))
    assert {"RecipeSGD", "Dirac", "PatchWhitening", "FitPatchWhitening", "AlternatingFlip", "TTAViews",
            "TTAMean"} <= reached["cnnlab.core.recipe"], "P12's key covers every piece it names"


def test_the_roots_are_what_every_module_imports_from_core_however_it_is_spelled(source: Path) -> None:
    """`CodeBase.read` parses only the modules that contain the word `core` (every job process reads the code
    base on its start-up): an import of cnnlab.core spelled with spaces is still a root, and the roots are those
    of a read where every module says `core` (a comment), so that every module is parsed."""
    (source / "spelled.py").write_text("from cnnlab .core. loop import epoch_order as order\n"
                                       "import cnnlab . core.layers as lay\n\norder(1, 2, 3), lay.RandomPadShift\n")
    roots = CodeBase.read(source).roots
    assert {("cnnlab.core.loop", "epoch_order"), ("cnnlab.core.layers", "RandomPadShift")} <= roots
    for path in source.rglob("*.py"):
        path.write_text(path.read_text() + "\n# core\n")
    assert CodeBase.read(source).roots == roots


def test_a_job_walks_the_definitions_its_keys_reach_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job computes its result key and its group key, each twice; they reach the same definitions, which are
    walked and hashed once (a walk and its hash: about 0.05 s, in every job process); other settings, another."""
    code = CodeBase.read(SRC)
    walks: list[int] = []
    walk = code.reached
    monkeypatch.setattr(code, "reached", lambda roots: walks.append(1) or walk(roots))
    p00 = code.digest(setting_strings("p00"))
    assert [code.digest(setting_strings("p00")) for _ in range(3)] == [p00] * 3 and len(walks) == 1
    assert code.digest(setting_strings("p12")) != p00 and len(walks) == 2


def test_a_new_setting_left_unset_changes_no_key() -> None:
    assert without_unset({"a": 1, "b": None, "c": {"d": None, "e": [{"f": None, "g": 2}]}}) == \
        {"a": 1, "c": {"e": [{"g": 2}]}}
    key = result_key(compose_config("project=p05"))
    assert result_key(compose_config("project=p05", "training.optimizer.weight_decay=null")) == key


def test_the_machine_part_of_the_key() -> None:
    job = compose_config("project=p05")
    key = result_key(job)
    assert result_key(compose_config("project=p05", "threads=1")) != key or compute_platform(0, "auto")["threads"] == 1
    assert result_key(compose_config("project=p05", "threads=7")) != key
    assert result_key(compose_config("project=p05", "deterministic_ops=enabled")) != key
    platform = compute_platform(0, "auto")
    assert {"threads", "op_determinism"} <= set(platform) and ("gpus" in platform or "isa" in platform)


def test_the_instruction_set_level_follows_oneDNN() -> None:
    avx512 = {"sse4_1", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"}
    assert isa_level({"sse4_1", "avx", "avx2", "fma"}) == "avx2"
    assert isa_level(avx512) == "avx512_core"
    assert isa_level(avx512 | {"avx512_vnni", "avx512_bf16"}) == "avx512_core_bf16"  # e.g. AMD EPYC (Zen 4)
    amx = avx512 | {"avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}
    assert isa_level(amx) == "avx512_core_amx"  # e.g. Xeon Sapphire Rapids
    assert isa_level(amx, "AVX2") == "avx2", "ONEDNN_MAX_CPU_ISA caps it"
    assert isa_level(amx, "ALL") == isa_level(amx, "default") == "avx512_core_amx"
    assert isa_level({"avx2", "fma"}, "AVX512_CORE") == "avx2", "a cap above the CPU changes nothing"
    model, flags = cpu_info("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\n"
                            "model name\t: Some CPU\nflags\t\t: fpu avx2 fma\n")
    assert (model, flags) == ("Some CPU", {"fpu", "avx2", "fma"})


def test_op_determinism_is_on_where_kernels_do_not_repeat_by_themselves() -> None:
    assert op_determinism("auto", ["NVIDIA H200"]) and not op_determinism("auto", [])
    assert op_determinism("enabled", []) and not op_determinism("disabled", ["NVIDIA H200"])


def test_mixed_precision_auto_is_bfloat16_on_a_gpu_or_amx_and_resolved_into_the_settings() -> None:
    """`auto` (P12, P12_RESNET9) is bfloat16 only where it is fast; the job holds the machine's choice as a bool,
    so the key and the params say which precision the run computed in; a project with false keeps false."""
    avx512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16"}
    amx = avx512 | {"amx_tile", "amx_bf16", "amx_int8"}
    assert bf16_is_fast(isa_level(amx), []) and bf16_is_fast("avx2", ["NVIDIA H200"])
    assert not bf16_is_fast(isa_level(avx512), []), "bf16 instructions without AMX: slower than float32"
    assert not bf16_is_fast(isa_level(amx, "AVX512_CORE_BF16"), []), "AMX capped away by ONEDNN_MAX_CPU_ISA"
    here = bf16_is_fast_here()
    for project in ("p12", "p12_resnet9"):
        job = compose_config(f"project={project}")
        assert job.training.mixed_precision is here
        assert settings(job)["training"]["mixed_precision"] is here
    assert compose_config("project=p11").training.mixed_precision is False
    assert compose_config("project=p11", "training.mixed_precision=auto").training.mixed_precision is here


def test_a_negative_thread_count_is_one_line() -> None:
    with pytest.raises(ConfigError, match="threads=-1"):
        result_key(compose_config("project=p05", "threads=-1"))


def _train_at_once(tiny_data_dir: Path, folders_and_env: dict[str, dict[str, str]], tmp: Path,
                   *overrides: str) -> dict[str, dict]:
    """Train P07 (batch norm, dropout) on tiny data in several processes started together, each in its own
    folder; each one's key, every epoch's numbers (the epoch's wall time aside) and its test metrics."""
    procs = {name: subprocess.Popen(job_command("cnnlab.train", tmp / name, tiny_data_dir, "project=p07",
                                                "training.epochs=2", "training.batch_size=32", *overrides),
                                    cwd=ROOT, env=job_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
             for name, env in folders_and_env.items()}
    found = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-3000:]
        (run,) = (tmp / name / "runs" / "p07").iterdir()
        with (run / "history.csv").open() as f:
            epochs = [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(f)]
        metrics = json.loads((run / "metrics.json").read_text())
        found[name] = {"key": json.loads((run / "run.json").read_text())["key"], "epochs": epochs,
                       "test": (metrics["test_accuracy"], metrics["test_loss"], metrics["per_class_accuracy"]),
                       "machine": metrics["machine"]}
    return found


@pytest.mark.system
def test_a_batch_norm_project_trained_twice_at_once_computes_the_same_numbers(tiny_data_dir: Path,
                                                                              tmp_path: Path) -> None:
    runs = _train_at_once(tiny_data_dir, {"first": {}, "second": {}}, tmp_path)
    assert runs["first"] == runs["second"]
    assert len(runs["first"]["epochs"]) == 2 and "threads" in runs["first"]["machine"]


@pytest.mark.system
def test_the_cpu_instruction_set_and_the_thread_count_change_the_numbers_and_the_key(tiny_data_dir: Path,
                                                                                    tmp_path: Path) -> None:
    """The cause of P07's two results (76.02 % and 77.29 % from one key, made on two machines): the numbers
    depend on the instruction set oneDNN computes with and on the thread count, so the key holds both. Shown on
    one machine by capping oneDNN's instruction set (ONEDNN_MAX_CPU_ISA) and by one thread instead of two; before
    the key held them, these runs had the key of the uncapped run while computing other numbers."""
    _, flags = cpu_info()
    if isa_level(flags) in ("none", "sse41", "avx", "avx2"):
        pytest.skip(f"this CPU's level is {isa_level(flags)}: nothing below it to cap to AVX2 is worth showing")
    runs = _train_at_once(tiny_data_dir, {"machine": {}, "capped": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}, tmp_path)
    assert runs["capped"]["epochs"][0] != runs["machine"]["epochs"][0], "another instruction set, other numbers"
    assert runs["capped"]["key"] != runs["machine"]["key"]
    assert "(avx2)" in runs["capped"]["machine"]
    if compute_platform(0, "auto")["threads"] > 1:
        one = _train_at_once(tiny_data_dir, {"one thread": {}}, tmp_path, "threads=1")["one thread"]
        assert one["epochs"][0] != runs["machine"]["epochs"][0] and one["key"] != runs["machine"]["key"]


NUMPY_BLAS_THREADS = """
import sys
import numpy
from threadpoolctl import threadpool_info
numpys = {i["filepath"] for i in threadpool_info() if i["user_api"] == "blas"}
from cnnlab.config.backend import use_backend
use_backend("tensorflow", {"threads": int(sys.argv[1]), "op_determinism": False})
print(sorted(i["num_threads"] for i in threadpool_info() if i["filepath"] in numpys))
"""


@pytest.mark.system
def test_numpys_blas_computes_with_the_threads_the_key_holds() -> None:
    """cnnlab.core fits P11's ZCA matrix and P12's whitening with numpy, whose OpenBLAS sizes its pool from the
    machine (its thread count changes an SVD's bits): a job's `threads` sets it too, in a process started without
    OPENBLAS_NUM_THREADS (which the tests' own processes set to 1) or OMP_NUM_THREADS (which OpenBLAS also reads)."""
    env = {k: v for k, v in job_env().items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    for threads in (1, 2):
        done = subprocess.run([sys.executable, "-c", NUMPY_BLAS_THREADS, str(threads)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == f"[{threads}]", (threads, done.stdout)
