"""Model files register themselves on import; add a new model's module here."""
from xmr.models import vsepp  # noqa: F401
from xmr.models import mmca  # noqa: F401
from xmr.models import jgcar  # noqa: F401
from xmr.models import cmmn  # noqa: F401
from xmr.models import acmm  # noqa: F401
from xmr.models import revisiting  # noqa: F401
from xmr.models.base import RetrievalModel, create_model, get_entry, get_preset, model_names, register

__all__ = ["RetrievalModel", "create_model", "get_entry", "get_preset", "model_names", "register"]
