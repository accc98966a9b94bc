"""axjax: AxBench (steering and concept detection in language models) in JAX."""

import os as _os

_os.environ.setdefault("HF_HUB_OFFLINE", "1")  # axjax never downloads weights or data

from axjax.errors import AxjaxError, CheckpointError, UnsupportedModelError  # noqa: E402
from axjax.loading.load import EMBEDDED_MODEL, LoadedModel, load  # noqa: E402
from axjax.model.config import PRESETS, GemmaConfig, from_hf_config  # noqa: E402
from axjax.model.interventions import (  # noqa: E402
    Intervention, InterventionContext, clamping, steering, steering_params)
from axjax.model.transformer import ForwardOutput, forward, init_params  # noqa: E402
from axjax.dictionary import Dictionary, load_dictionary, save_dictionary  # noqa: E402
