"""Export a trained meta-learner to TF Serving in one command (the logic lives in tf_maml.serving).

    python scripts/export.py --keras runs/x/maml.keras --base saved_models --name sinusoid
    python scripts/export.py --keras runs/x/maml.keras --checkpoint runs/x/checkpoints --base saved_models --name sinusoid
    python scripts/export.py --keras runs/x/maml.keras --base saved_models --name sinusoid_task7 --adapt-support task7.npz

Without ``--adapt-support`` the meta-learner is exported (signatures ``serving_default`` and
``adapt_and_predict``); with it, the model adapted to that task (``support_x``, ``support_y`` arrays
in the .npz) is exported (``serving_default`` only). Prints the version directory written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_parser() -> argparse.ArgumentParser:
    from tf_maml.settings import flag_type, integer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keras", required=True, help="a .keras file of a tf_maml.MAML (or of a plain Keras model)")
    p.add_argument("--checkpoint", help="a tf.train checkpoint (prefix or directory) whose weights replace the file's")
    p.add_argument("--base", default="saved_models", help="TF Serving base directory (default: saved_models)")
    p.add_argument("--name", required=True, help="model name: the export goes to <base>/<name>/<next version>/")
    p.add_argument("--adapt-support", help=".npz with support_x, support_y of one task: export the adapted model")
    p.add_argument("--steps", type=flag_type(integer(0)), help="inner steps (default: the meta-learner's eval_inner_steps)")
    p.add_argument("--metadata", help="JSON object (or @file.json) merged into assets/tf_maml.json")
    return p


def main(argv=None) -> str:
    parser = make_parser()
    args = parser.parse_args(argv)
    import tensorflow as tf

    metadata = None
    if args.metadata:
        try:
            text = open(args.metadata[1:], encoding="utf-8").read() if args.metadata.startswith("@") else args.metadata
            metadata = json.loads(text)
        except (OSError, ValueError) as err:
            parser.error(f"--metadata: {err}")
        if not isinstance(metadata, dict):
            parser.error("--metadata must be a JSON object.")
    from tf_maml.serving import export_from_file

    try:  # nothing is half-written on failure (see tf_maml.serving.write_version)
        path = export_from_file(
            args.keras, args.base, args.name, checkpoint=args.checkpoint, adapt_support=args.adapt_support,
            steps=args.steps, metadata=metadata,
        )
    except (ValueError, TypeError, KeyError, OSError, tf.errors.OpError) as err:
        parser.error(err.args[0] if isinstance(err, KeyError) and err.args else str(err))
    print(path)
    return path


if __name__ == "__main__":
    main()
