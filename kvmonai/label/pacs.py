"""A PACS on this machine for the annotation loop: Orthanc with its DICOMweb plugin, and studies stored by STOW-RS.

Clinical teams keep studies in a PACS and read them in a web viewer; MONAI Label reaches such a PACS through
DICOMweb (``--studies http://.../dicom-web``). :class:`OrthancServer` starts Debian's Orthanc (``apt-get install
orthanc orthanc-dicomweb``) with the configuration kept in ``kvmonai/label/orthanc.json``, its database under a
storage folder (``data/pacs/`` by default), and stops it by its process group. :func:`load_studies` stores MR series
in any DICOMweb server: NIfTI volumes (e.g. the prepared synthetic cases) are first written as MR series with their
geometry (:func:`kvmonai.data.dicom_series.write_dicom_series`), DICOM folders are stored as they are.

Network exposure: Orthanc 1.10 has no option to bind its HTTP server to one address, so it listens on every
interface. ``RemoteAccessAllowed: false`` in the configuration makes it refuse every client other than 127.0.0.1
(HTTP 401 Unauthorized, from Orthanc's ``SendUnauthorized``), and its DICOM (DIMSE) server is off, so only loopback
clients can read or store anything.

Written here rather than taken from a library: no Python package starts and supervises an Orthanc process; the
storage itself goes through ``dicomweb_client`` (STOW-RS).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from kvmonai.utils import KVMonaiError, write_text_atomic

__all__ = [
    "DICOMWEB_PLUGIN",
    "ORTHANC_CONFIG",
    "LoadedSeries",
    "OrthancServer",
    "PacsError",
    "expand_sources",
    "iter_series",
    "load_studies",
    "store_series",
]

#: the Orthanc configuration kvmonai runs with (storage folder and port are filled in at start)
ORTHANC_CONFIG = Path(__file__).with_name("orthanc.json")
#: Debian's DICOMweb plugin (package orthanc-dicomweb)
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
_INSTALL_HINT = "install it with: sudo apt-get install orthanc orthanc-dicomweb (Debian/Ubuntu)"


class PacsError(KVMonaiError, RuntimeError):
    """Orthanc is missing, cannot start, or a store failed; the message says what to do."""


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class OrthancServer:
    """One Orthanc process on ``127.0.0.1:port`` with the DICOMweb plugin and its database in ``storage``.

    Use it as a context manager (started on entry, stopped in ``finally``) or with :meth:`start` / :meth:`stop`
    (``scripts/pacs.sh``; the process id is kept in ``storage/orthanc.pid`` so that a later :meth:`stop` finds it).

    Args:
        storage: folder for the database, the generated configuration, the log and the pid file (created).
        port: HTTP port (DICOMweb at ``http://127.0.0.1:port/dicom-web``).
        binary: the Orthanc executable (default: ``Orthanc`` on ``PATH``, else ``/usr/sbin/Orthanc``).
        plugin: the DICOMweb plugin library.

    Raises:
        ValueError: for a port outside 1..65535.
    """

    storage: Path
    port: int = 8042
    binary: str | None = None
    plugin: Path = DICOMWEB_PLUGIN

    def __post_init__(self) -> None:
        self.storage = Path(self.storage).resolve()
        if not 0 < int(self.port) < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}.")
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Orthanc's REST root."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (QIDO-RS, WADO-RS, STOW-RS), the URL MONAI Label's ``--studies`` takes."""
        return f"{self.url}/dicom-web"

    @property
    def pid_file(self) -> Path:
        return self.storage / "orthanc.pid"

    @property
    def log_file(self) -> Path:
        return self.storage / "orthanc.log"

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of Orthanc's log."""
        if not self.log_file.is_file():
            return "(no log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def _executable(self) -> str:
        debian = "/usr/sbin/Orthanc"  # not on a normal user's PATH
        found = self.binary or shutil.which("Orthanc") or (debian if Path(debian).is_file() else None)
        if not found or not Path(found).is_file():
            raise PacsError(f"Orthanc is not installed ({self.binary or 'Orthanc'} not found); {_INSTALL_HINT}.")
        if not Path(self.plugin).is_file():
            raise PacsError(f"the Orthanc DICOMweb plugin {self.plugin} is missing; {_INSTALL_HINT}.")
        return found

    def write_config(self) -> Path:
        """Write ``storage/orthanc.json``: the kept configuration with this storage, port and plugin."""
        config = json.loads(ORTHANC_CONFIG.read_text())
        config["StorageDirectory"] = config["IndexDirectory"] = str(self.storage / "db")
        config["HttpPort"] = int(self.port)
        config["Plugins"] = [str(self.plugin)]
        return write_text_atomic(self.storage / "orthanc.json", json.dumps(config, indent=2) + "\n")

    def running_pid(self) -> int | None:
        """The process id in the pid file if that process is alive, else ``None``."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def answering(self) -> bool:
        """Whether Orthanc answers ``/system`` on the port."""
        import requests

        try:
            return requests.get(f"{self.url}/system", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def start(self, timeout: float = 60.0) -> int:
        """Start Orthanc in its own process group and wait until it answers.

        Returns:
            its process id.

        Raises:
            PacsError: when Orthanc or its plugin is missing, one is running already from this storage, the port
                is taken, or it does not answer within ``timeout`` (it is stopped then, and the log tail is shown).
        """
        binary = self._executable()
        pid = self.running_pid()
        if pid is not None:
            raise PacsError(f"Orthanc is already running from {self.storage} (pid {pid}) at {self.url}; stop it first.")
        if _port_in_use(self.port):
            raise PacsError(f"port {self.port} on 127.0.0.1 is in use; choose another (--port / KVMONAI_PACS_PORT).")
        self.storage.mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                [binary, str(config)], cwd=self.storage, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        write_text_atomic(self.pid_file, f"{self._proc.pid}\n")
        deadline = time.monotonic() + timeout
        while not self.answering():
            if self._proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise PacsError(f"Orthanc exited with status {self._proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise PacsError(f"Orthanc did not answer {self.url}/system within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)
        return self._proc.pid

    def stop(self, timeout: float = 20.0) -> bool:
        """Stop Orthanc (SIGTERM to its process group, SIGKILL after ``timeout``).

        Returns:
            whether a running Orthanc was stopped.
        """
        pid = self._proc.pid if self._proc is not None and self._proc.poll() is None else self.running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                break
            time.sleep(0.1)
        if _pid_alive(pid) and (self._proc is None or self._proc.poll() is None):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
        self.pid_file.unlink(missing_ok=True)
        return True

    def __enter__(self) -> OrthancServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class LoadedSeries:
    """One series stored in the PACS.

    Attributes:
        source: the NIfTI file or DICOM folder it came from.
        patient_id: PatientID.
        study_uid: StudyInstanceUID.
        series_uid: SeriesInstanceUID.
        instances: number of instances stored.
    """

    source: Path
    patient_id: str
    study_uid: str
    series_uid: str
    instances: int


def store_series(dicomweb_url: str, files: Sequence[Path], batch: int = 64) -> int:
    """Store DICOM files in a DICOMweb server with STOW-RS (``dicomweb_client``).

    Args:
        dicomweb_url: the DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``.
        files: DICOM files.
        batch: instances per STOW-RS request.

    Returns:
        the number of instances the server accepted.

    Raises:
        PacsError: when the server cannot be reached or refuses an instance (the message names the file).
    """
    import pydicom
    import requests
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=dicomweb_url)
    stored = 0
    for start in range(0, len(files), batch):
        chunk = list(files[start : start + batch])
        datasets = [pydicom.dcmread(f) for f in chunk]
        try:
            response = client.store_instances(datasets=datasets)
        except requests.RequestException as e:
            raise PacsError(f"STOW-RS to {dicomweb_url} failed for {chunk[0].parent}: {e}") from e
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            uids = {str(item.ReferencedSOPInstanceUID) for item in failed}
            bad = [f for f, ds in zip(chunk, datasets, strict=True) if str(ds.SOPInstanceUID) in uids]
            raise PacsError(f"{dicomweb_url} refused {len(uids)} instance(s), e.g. {bad[0] if bad else chunk[0]}.")
        stored += len(chunk)
    return stored


def _is_nifti(path: Path) -> bool:
    return path.is_file() and (path.name.endswith(".nii.gz") or path.suffix == ".nii")


def _case_id(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        name = name.removesuffix(suffix)
    return name


def expand_sources(sources: Sequence[str | os.PathLike]) -> list[Path]:
    """The NIfTI files and DICOM folders to load: a folder of NIfTI files gives its files, in name order.

    Raises:
        ValueError: for a source that does not exist or is neither NIfTI nor a folder (naming it).
    """
    items: list[Path] = []
    for source in map(Path, sources):
        if not source.exists():
            raise ValueError(f"{source}: no such file or folder.")
        if source.is_dir() and not any(source.glob("*.dcm")) and any(_is_nifti(p) for p in source.iterdir()):
            items.extend(sorted(p for p in source.iterdir() if _is_nifti(p)))
        elif source.is_dir() or _is_nifti(source):
            items.append(source)
        else:
            raise ValueError(f"{source}: neither a NIfTI volume (.nii, .nii.gz) nor a DICOM series folder.")
    return items


def load_studies(
    dicomweb_url: str, sources: Sequence[str | os.PathLike], tilt: float = 0.0, progress: bool = True
) -> list[LoadedSeries]:
    """Store MR series in a DICOMweb server: NIfTI volumes written as DICOM first, DICOM folders as they are.

    A NIfTI volume becomes one study of one patient (PatientID: the file name without extension), its UIDs derived
    from the file's content and the tilt, so that loading it again stores nothing new. ``tilt`` degrees make the
    series oblique, as scanners write tilted stacks. A DICOM folder must hold one series
    (:func:`kvmonai.portable.dicom.find_series` checks its geometry).

    Args:
        dicomweb_url: the DICOMweb root.
        sources: NIfTI files (``.nii``/``.nii.gz``), DICOM series folders, or folders of NIfTI files.
        tilt: tilt of series written from NIfTI, in degrees (0 for axial).
        progress: show a progress bar.

    Returns:
        one record per stored series.

    Raises:
        ValueError: for a source that does not exist or holds neither NIfTI files nor one DICOM series (naming it).
        PacsError: when storing fails.
    """
    import nibabel as nib
    import numpy as np
    from tqdm.auto import tqdm

    from kvmonai.data import rotation, write_dicom_series
    from kvmonai.portable.dicom import DicomInputError, find_series

    items = expand_sources(sources)
    loaded = []
    for item in tqdm(items, desc="storing series", unit="series", disable=not progress):
        if item.is_dir():
            try:
                series = find_series(item)
            except DicomInputError as e:
                raise ValueError(str(e)) from e
            header = series.headers[0]
            n = store_series(dicomweb_url, list(series.files))
            loaded.append(LoadedSeries(item, str(header.PatientID), str(header.StudyInstanceUID), series.uid, n))
            continue
        try:
            img = nib.load(item)
            data = np.asarray(img.dataobj)
        except (OSError, nib.filebasedimages.ImageFileError) as e:
            raise ValueError(f"{item}: not a readable NIfTI volume: {e}") from e
        if data.ndim == 4 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise ValueError(f"{item}: expected a 3D volume, got shape {data.shape}.")
        seed = f"{hashlib.sha256(item.read_bytes()).hexdigest()} tilt {tilt:g}"  # same volume, same geometry
        case = _case_id(item)
        with tempfile.TemporaryDirectory(prefix="kvmonai-pacs-") as tmp:
            info = write_dicom_series(
                data, img.affine, Path(tmp) / case, tilt=rotation(tilt, (1.0, 1.0, 0.0)) if tilt else None,
                patient_id=case, patient_name=f"Synthetic^{case}", series_description=f"{case} abdominal MR",
                uid_seed=seed,
            )  # fmt: skip
            n = store_series(dicomweb_url, list(info.files))
        loaded.append(LoadedSeries(item, case, info.study_uid, info.series_uid, n))
    return loaded


def iter_series(dicomweb_url: str, modality: str | None = None) -> Iterator[dict[str, str]]:
    """Series the DICOMweb server lists (QIDO-RS): PatientID, StudyInstanceUID, SeriesInstanceUID, Modality."""
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=dicomweb_url)
    filters = {"Modality": modality} if modality else None
    fields = ["PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesDescription"]
    for item in client.search_for_series(search_filters=filters, fields=fields):
        yield {key: _qido_value(item, key) for key in fields}


_TAGS = {
    "PatientID": "00100020",
    "StudyInstanceUID": "0020000D",
    "SeriesInstanceUID": "0020000E",
    "Modality": "00080060",
    "SeriesDescription": "0008103E",
}


def _qido_value(item: dict, key: str) -> str:
    values = item.get(_TAGS[key], {}).get("Value") or [""]
    return str(values[0])
