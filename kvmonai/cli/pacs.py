"""``kvmonai pacs start|stop|status|load``: a local Orthanc PACS (DICOMweb) for MONAI Label and OHIF.

``scripts/pacs.sh`` runs this in the project's environment. Defaults: storage ``data/pacs`` (``KVMONAI_PACS_DIR``),
port 8042 (``KVMONAI_PACS_PORT``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kvmonai pacs``."""
    from kvmonai.utils import add_count_argument

    parser.add_argument("action", choices=("start", "stop", "status", "load"), help="what to do")
    parser.add_argument(
        "sources", nargs="*", type=Path,
        help="load: NIfTI volumes, folders of them, or DICOM series folders (e.g. data/prepared/synthetic/imagesTr)",
    )  # fmt: skip
    parser.add_argument(
        "--storage", type=Path, default=Path(os.environ.get("KVMONAI_PACS_DIR", "data/pacs")),
        help="Orthanc's database, configuration, log and pid file (default data/pacs, or $KVMONAI_PACS_DIR)",
    )  # fmt: skip
    add_count_argument(
        parser, "--port", default=int(os.environ.get("KVMONAI_PACS_PORT", "8042")),
        help="HTTP port on 127.0.0.1 (default 8042, or $KVMONAI_PACS_PORT)",
    )  # fmt: skip
    parser.add_argument(
        "--tilt", type=float, default=0.0,
        help="load: tilt series made from NIfTI by this many degrees, as scanners write oblique stacks (default 0)",
    )  # fmt: skip
    add_count_argument(parser, "--limit", help="load: at most this many volumes")


def run(args: argparse.Namespace) -> int:
    """Run the action.

    Returns:
        0 on success; 1 when ``status`` finds no server; 2 for bad input or a PACS error.
    """
    from kvmonai.label import OrthancServer, PacsError, expand_sources, iter_series, load_studies

    server = OrthancServer(args.storage, port=args.port)
    try:
        if args.action == "start":
            pid = server.start()
            print(f"Orthanc (pid {pid}) at {server.url}; DICOMweb {server.dicomweb_url}; storage {server.storage}")
        elif args.action == "stop":
            print("Orthanc stopped" if server.stop() else f"no Orthanc running from {server.storage}")
        elif args.action == "status":
            if not server.answering():
                print(f"no PACS answers at {server.url}")
                return 1
            series = list(iter_series(server.dicomweb_url))
            print(f"Orthanc at {server.url} (DICOMweb {server.dicomweb_url}): {len(series)} series")
            for s in series:
                print(f"  {s['PatientID']:<24} {s['Modality']:<4} {s['SeriesInstanceUID']}  {s['SeriesDescription']}")
        else:
            if not args.sources:
                print("kvmonai pacs load: error: give NIfTI volumes or DICOM folders to load", file=sys.stderr)
                return 2
            if not server.answering():
                print(f"kvmonai pacs load: error: no PACS at {server.url}; run scripts/pacs.sh start", file=sys.stderr)
                return 2
            sources = expand_sources(args.sources)[: args.limit]
            for s in load_studies(server.dicomweb_url, sources, tilt=args.tilt):
                print(f"stored {s.instances:>4} MR images of {s.patient_id} (SeriesInstanceUID {s.series_uid})")
    except (PacsError, ValueError) as e:
        print(f"kvmonai pacs {args.action}: error: {e}", file=sys.stderr)
        return 2
    return 0
