"""The DVC stages' commands: `python -m cnnlab.pipeline fetch|prepare|compose|train P|evaluate P`.

params.yaml picks what the pipeline builds; each project's settings come from the Hydra tree (conf/) through
the same overrides here for every stage. `compose` writes each project's resolved config to
`composed/<project>.yaml`, the one dependency of its train stage that holds its settings, so editing a
config retrains exactly the projects whose composed config changed. `train` and `evaluate` run the same
entry points as the command line (`python -m cnnlab.train`, `python -m cnnlab.evaluate`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from cnnlab.resume import result_settings

CONF = Path(__file__).resolve().parents[2] / "conf"
COMPOSED = Path("composed")


def read_params(path: Path = Path("params.yaml")) -> dict[str, Any]:
    params = yaml.safe_load(path.read_text())
    if params.get("data") not in ("cifar10", "tiny"):
        raise SystemExit(f"params.yaml: data={params.get('data')!r} is not allowed: cifar10 or tiny")
    cap = params.get("max_epochs", 0)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
        raise SystemExit(f"params.yaml: max_epochs={cap!r} is not allowed: a non-negative integer (0 = no cap)")
    return params


def compose_project(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def overrides_for(params: dict[str, Any], project: str | None = None) -> list[str]:
    """The Hydra overrides every stage passes for `project` (data, seed, and the epoch cap where set)."""
    overrides = [f"data={params['data']}", f"training.seed={params['seed']}"]
    if project is not None:
        overrides.insert(0, f"project={project}")
        cap = params.get("max_epochs", 0)
        if cap:
            epochs = compose_project(overrides).training.epochs
            overrides.append(f"training.epochs={min(epochs, cap)}")
    return overrides


def run_module(module: str, overrides: list[str], stage: str) -> None:
    """Replace this process by `python -m module overrides...`, tagged with its DVC stage."""
    os.environ["DVC_STAGE"] = stage
    os.execv(sys.executable, [sys.executable, "-m", module, *overrides])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cnnlab.pipeline", description=__doc__)
    parser.add_argument("stage", choices=["fetch", "prepare", "compose", "train", "evaluate"])
    parser.add_argument("project", nargs="?")
    args = parser.parse_args(argv)
    params = read_params()
    if args.stage in ("train", "evaluate"):
        if args.project not in params["projects"]:
            parser.error(f"project {args.project!r} is not in params.yaml's projects {params['projects']}")
        run_module(f"cnnlab.{args.stage}", overrides_for(params, args.project), f"{args.stage}@{args.project}")
    elif args.stage == "compose":
        COMPOSED.mkdir(exist_ok=True)
        for stale in set(COMPOSED.glob("*.yaml")) - {COMPOSED / f"{p}.yaml" for p in params["projects"]}:
            stale.unlink()
        for project in params["projects"]:
            text = yaml.safe_dump(result_settings(compose_project(overrides_for(params, project))), sort_keys=False)
            (COMPOSED / f"{project}.yaml").write_text(text)
    else:
        from cnnlab.data import DataSpec, fetch, prepare

        spec = DataSpec.from_config(compose_project(overrides_for(params)))
        (fetch if args.stage == "fetch" else prepare)(spec)


if __name__ == "__main__":
    main()
