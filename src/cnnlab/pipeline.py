"""The DVC stages' commands: `python -m cnnlab.pipeline fetch|prepare|compose|train P SEED`.

params.yaml picks what the pipeline builds (projects, seeds, data, backend, an epoch cap); each project's own
settings come from the Hydra tree (conf/). `compose` writes, per project, exactly what decides its trained model
but the seed (cnnlab.config.settings.settings) to `composed/<project>.yaml`: the project's train stages, one per
seed, depend on that file and train from it and their seed, and from nothing else (conf/ gives them only where
files go, how runs are tracked and the project's description), so editing a description retrains nothing and
editing a model retrains that project's seeds. Each seed publishes under its own `s<seed>/` folders (outputs/,
metrics/, plots/). `train` is the same `cnnlab.job.steps.train` as the command line, with `publish=true` (the run
is published to those folders), `registry.register=true` (its model becomes a version of `cnnlab-<project>`,
the champion if it is the best on validation) and `on_finished=skip` (a stage rerun after a kill reuses a run
that had already finished, and registers it if the kill came first). In a queued experiment's temporary copy of
the repository, the copy's own code and configs run, and the run is tracked in the user's store
(cnnlab.run.checkout)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from cnnlab.cli import one_line_errors
from cnnlab.config.compose import compose, to_job
from cnnlab.config.errors import ConfigError, fail
from cnnlab.config.schema import Backend
from cnnlab.config.settings import apply_settings, capped, check_epoch_cap, settings
from cnnlab.job.checks import check_id
from cnnlab.run.checkout import config_overrides, relocated, run_own_code
from cnnlab.run.context import JobContext
from cnnlab.run.data import DataSpec, fetch, prepare

BACKENDS = [b.value for b in Backend]

COMPOSED = Path("composed")
log = logging.getLogger(__name__)


PARAMS = {"projects", "seeds", "data", "backend", "max_epochs"}


def read_params(path: Path = Path("params.yaml")) -> dict[str, Any]:
    """params.yaml, checked: every value named with what is allowed (ConfigError: one line, exit status 2)."""
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing: run the pipeline from the project's folder (it has params.yaml)") \
            from None
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path} cannot be read as YAML ({' '.join(str(err).split())}): fix it, or "
                          "`git checkout params.yaml` for the committed one") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: a mapping of {', '.join(sorted(PARAMS))} is needed, got {params!r}")
    unknown = sorted(set(params) - PARAMS)
    if unknown:
        raise ConfigError(f"{path}: {', '.join(unknown)} is not a pipeline parameter; allowed: "
                          f"{', '.join(sorted(PARAMS))} (each project's own settings are in conf/)")
    if params.get("data") not in ("cifar10", "tiny"):
        fail(f"{path}: data", params.get("data"), "cifar10 or tiny")
    check_epoch_cap(f"{path}: max_epochs", params.get("max_epochs", 0))
    if params.get("backend") not in BACKENDS:
        fail(f"{path}: backend", params.get("backend"), f"one of {', '.join(BACKENDS)}")
    projects = params.get("projects")
    if not isinstance(projects, list) or not projects:
        fail(f"{path}: projects", projects, "a list of project ids")
    for project in projects:
        check_id(f"{path}: projects", project)
    twice = sorted({p for p in projects if projects.count(p) > 1})
    if twice:
        fail(f"{path}: projects", projects, f"each project once ({', '.join(twice)} named more than once)")
    seeds = params.get("seeds")
    if not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds) \
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        fail(f"{path}: seeds", seeds, "a list of distinct non-negative integers (training.seed of each project's "
                                      "runs), e.g. [42, 43, 44]")
    return params


def run_overrides(params: dict[str, Any]) -> list[str]:
    """Overrides every stage composes with: the data set, the backend and the epoch cap from params.yaml (the
    environment's KERAS_BACKEND does not reach the pipeline: DVC cannot see it, so it could not invalidate
    anything)."""
    if os.environ.get("KERAS_BACKEND", params["backend"]) != params["backend"]:
        log.warning("KERAS_BACKEND=%s is ignored by the pipeline, which uses params.yaml's backend=%s "
                    "(dvc exp run --temp -S backend=...)", os.environ["KERAS_BACKEND"], params["backend"])
    return [f"data={params['data']}", f"backend={params['backend']}", f"max_epochs={params.get('max_epochs', 0)}",
            *config_overrides()]


def composed(params: dict[str, Any], project: str) -> dict[str, Any]:
    """The settings the pipeline trains `project` with, the seed aside (each train stage has its own): its conf/
    settings and params.yaml's epoch cap."""
    chosen = settings(capped(to_job(compose([f"project={project}", *run_overrides(params)]))))
    del chosen["training"]["seed"]
    return chosen


def seed_paths(seed: int) -> list[str]:
    """Overrides that publish a seed's run under its own folders: outputs/s<seed>/<project>/, metrics/s<seed>/..."""
    return [f"paths.{key}={key}/s{seed}" for key in ("outputs", "metrics", "plots")]


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    run_own_code("cnnlab.pipeline", sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m cnnlab.pipeline", description=__doc__)
    parser.add_argument("stage", choices=["fetch", "prepare", "compose", "train"])
    parser.add_argument("project", nargs="?")
    parser.add_argument("seed", nargs="?", type=int)
    args = parser.parse_args(argv)
    params = read_params()
    if args.stage == "train":
        if args.project not in params["projects"]:
            parser.error(f"project {args.project!r} is not in params.yaml's projects {params['projects']}")
        if args.seed not in params["seeds"]:
            parser.error(f"seed {args.seed!r} is not in params.yaml's seeds {params['seeds']}")
        # the job's steps import MLflow, Optuna, matplotlib and SciPy: the other stages need none of them
        from cnnlab.job.steps import train

        chosen = yaml.safe_load((COMPOSED / f"{args.project}.yaml").read_text())
        chosen["training"]["seed"] = args.seed
        base = to_job(compose([f"project={args.project}", *run_overrides(params), "publish=true",
                               "on_finished=skip", "registry.register=true", *seed_paths(args.seed)]))
        train(relocated(apply_settings(base, chosen)), JobContext.current())
    elif args.stage == "compose":
        COMPOSED.mkdir(exist_ok=True)
        for stale in set(COMPOSED.glob("*.yaml")) - {COMPOSED / f"{p}.yaml" for p in params["projects"]}:
            stale.unlink()
        for project in params["projects"]:
            text = yaml.safe_dump(composed(params, project), sort_keys=False)
            (COMPOSED / f"{project}.yaml").write_text(text)
    else:
        job = to_job(compose(run_overrides(params)))
        spec = DataSpec.from_config(job.data, job.mirror, job.paths.data)
        (fetch if args.stage == "fetch" else prepare)(spec)


if __name__ == "__main__":
    main()
