"""MONAI Label app entry point: ``monailabel start_server --app kvmonai/label/app --studies DIR [--conf ...]``.

MONAI Label loads this file and instantiates the class in it whose direct base class is ``MONAILabelApp``:
:class:`kvmonai.label.application.KVMonaiLabelApp`. Options: ``--conf bundles DIR``, ``--conf models setr_kv,...``,
``--conf overrides preset=small,img_size=128`` (see ``kvmonai/label/application.py``).
"""

from kvmonai.label.application import KVMonaiLabelApp

__all__ = ["KVMonaiLabelApp"]
