#!/usr/bin/env python
"""Write the MONAI bundles under bundles/ from the template in kvmonai/bundle/template: the 14 pairs of the five
transformers, the CNN reference (unet_cnn) and the pairs of the timm backbones (crossvit, swin, nextvit).

Usage: python scripts/make_bundles.py [--check]

--check only reports differences (exit status 1 when a bundle differs from what the generator makes).
The README's Performance section reads docs/measured/complexity_paper.csv (written by
`kvmonai complexity --preset paper --format csv --out docs/measured/complexity_paper.csv`), for the timm backbones
docs/measured/complexity_paper_timm.csv (`kvmonai complexity --preset paper --archs crossvit swin nextvit --format csv
--out docs/measured/complexity_paper_timm.csv`) and
docs/measured/study_synthetic_small.csv (results.csv of the `./scripts/demo.sh` study).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kvmonai.bundle.generate import check_bundles, write_bundles

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
MEASURED = ROOT / "docs" / "measured"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report differences")
    args = parser.parse_args()
    if args.check:
        problems = check_bundles(BUNDLES, MEASURED)
        for p in problems:
            print(p)
        return 1 if problems else 0
    for folder in write_bundles(BUNDLES, measured_dir=MEASURED):
        print(folder.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
