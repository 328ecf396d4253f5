#!/usr/bin/env bash
# A local PACS for the annotation loop: Orthanc with its DICOMweb plugin on 127.0.0.1, database under data/pacs/.
# Needs Debian's packages: sudo apt-get install orthanc orthanc-dicomweb   (the service they install is not used:
# this script runs its own Orthanc with kvmonai/label/orthanc.json, as the calling user).
#
# usage: scripts/pacs.sh start                 start Orthanc (DICOMweb at http://127.0.0.1:8042/dicom-web)
#        scripts/pacs.sh load SOURCES... [--tilt DEG] [--limit N]
#                                              store MR series: NIfTI volumes (written as DICOM with their geometry),
#                                              folders of them, or DICOM series folders
#        scripts/pacs.sh status                list the stored series
#        scripts/pacs.sh stop                  stop Orthanc (by its process group)
# Environment: KVMONAI_PACS_DIR (storage, default data/pacs), KVMONAI_PACS_PORT (default 8042).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
exec python -m kvmonai.cli pacs "$@"
