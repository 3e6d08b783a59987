"""`python -m models [PATTERN]`: list registered models (family, stems, optionally sizes)."""
import argparse

from . import create_model, list_models, model_family, model_stems
from .complexity import count_params

parser = argparse.ArgumentParser(prog="python -m models", description=__doc__)
parser.add_argument("pattern", nargs="?", default="*", help="glob pattern, e.g. 'rmnet*'")
parser.add_argument("--params", action="store_true", help="build each model and count its parameters")
args = parser.parse_args()
names = list_models(args.pattern)
if not names:
    parser.exit(1, f"no model matches {args.pattern!r}\n")
for name in names:
    stems = model_stems(name)
    extra = f"  {count_params(create_model(name, stem=stems[0])) / 1e6:8.2f} M" if args.params else ""
    print(f"{name:20s} {model_family(name):8s} {'/'.join(stems):15s}{extra}")
