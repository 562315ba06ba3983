"""hyena_rtf: Hyena language models whose long convolutions are rational transfer functions.

The public API is the model code, which needs only torch and transformers::

    from hyena_rtf import HyenaRTFConfig, HyenaRTFForCausalLM, RTF, HyenaOperator

Importing the package registers ``model_type="hyena_rtf"`` with ``AutoConfig`` and
``AutoModelForCausalLM``, so saved models load through the Auto classes without remote code.
The training, evaluation and data layers (Lightning, Hydra, datasets) are imported only by the
entry points and stay out of this import.
"""

from .modeling.configuration_hyena_rtf import HyenaRTFConfig
from .modeling.hyena import HyenaOperator
from .modeling.modeling_hyena_rtf import HyenaRTFForCausalLM, HyenaRTFModel, register_auto_classes
from .modeling.rtf import RTF

__version__ = "0.1.0"

__all__ = ["HyenaRTFConfig", "HyenaRTFForCausalLM", "HyenaRTFModel", "HyenaOperator", "RTF", "register_auto_classes"]

register_auto_classes()
