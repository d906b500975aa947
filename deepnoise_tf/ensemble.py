"""`python -m deepnoise_tf.ensemble --workdirs W1 W2 [...] --output DIR`: one SavedModel for an ensemble.

Rebuilds each training workdir's inference network (the teacher when there is one) from its
`config.json` and `checkpoints/best.weights.h5` (falling back to `last.weights.h5`), and exports
them together with `export.export_saved_model`: logits averaged (SPEC 8), the same `serving_default`
and `metadata` signatures as a single model, so `deepnoise_tf.predict` runs either.

Example:
    python -m deepnoise_tf.ensemble --workdirs runs/xception runs/xception_wide --output runs/ensemble
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import ml_collections

CHECKPOINTS = ("best.weights.h5", "last.weights.h5")  # preference order


def workdir_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (its `config.json`)."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {workdir} a training workdir?")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def workdir_checkpoint(workdir: str | pathlib.Path) -> pathlib.Path:
    """The weights to export: the best by validation accuracy, else the last."""
    folder = pathlib.Path(workdir) / "checkpoints"
    for name in CHECKPOINTS:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder} holds none of {list(CHECKPOINTS)}")


def load_inference_network(workdir: str | pathlib.Path):
    """`(config, (backbone, head))` of a workdir, weights restored from its checkpoint."""
    from deepnoise_tf import factory

    config = workdir_config(workdir)
    model = factory.build_model(config, steps_per_epoch=1)
    model.load_weights(str(workdir_checkpoint(workdir)))
    return config, model.inference_network()


def check_compatible(configs) -> tuple[int, str]:
    """The members' shared (image_size, normalization); raises ValueError if they differ.

    One signature feeds every member the same pixels and statistics, so both must agree.
    """
    sizes = {int(config.data.image_size) for config in configs}
    normalizations = {config.data.normalization for config in configs}
    if len(sizes) != 1 or len(normalizations) != 1:
        raise ValueError(
            f"ensemble members must share image_size and normalization; got sizes {sorted(sizes)} "
            f"and normalizations {sorted(normalizations)}"
        )
    return sizes.pop(), normalizations.pop()


def build_ensemble(workdirs, output: str | pathlib.Path) -> str:
    """Exports the inference networks of `workdirs` as one SavedModel at `output`; returns its path."""
    from deepnoise_tf import export

    if not workdirs:
        raise ValueError("name at least one workdir")
    configs = [workdir_config(workdir) for workdir in workdirs]
    image_size, normalization = check_compatible(configs)
    networks = [load_inference_network(workdir)[1] for workdir in workdirs]
    return export.export_saved_model(
        networks, str(output), image_size=image_size, normalization=normalization
    )


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m deepnoise_tf.ensemble", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workdirs", nargs="+", required=True, help="training workdirs")
    parser.add_argument("--output", required=True, help="SavedModel directory to write")
    arguments = parser.parse_args(sys.argv[1:] if argv is None else argv)
    path = build_ensemble(arguments.workdirs, arguments.output)
    print(
        f"[deepnoise] exported an ensemble of {len(arguments.workdirs)} models to {path}",
        flush=True,
    )
    return path


if __name__ == "__main__":
    main()
