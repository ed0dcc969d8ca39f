"""``from grafs.lightning import GrafsSearch``: the Lightning callback of
:mod:`grafs.integrations.lightning` (``pip install grafs[lightning]``); ``import grafs`` does not
import Lightning."""
from grafs.integrations.lightning import GrafsSearch

__all__ = ["GrafsSearch"]
