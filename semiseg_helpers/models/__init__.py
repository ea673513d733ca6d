"""Segmentation networks: timm encoders, the Semi-SegDefect network, baselines.

All models take float images in [0, 1] (they normalise internally) and return
a :class:`SegOutput`; build them with :func:`create_model`.
"""

from semiseg_helpers.models.deeplab import SegOutput, SemiSegDefect, atrous_rates
from semiseg_helpers.models.encoders import (
    PACKAGE_WEIGHTS,
    InputNormalization,
    LoadReport,
    TimmEncoder,
    load_pretrained,
    read_state_dict,
)
from semiseg_helpers.models.factory import (
    ARCHITECTURES,
    SmpSegmentationModel,
    count_parameters,
    create_model,
    decoder_parameters,
    smp_arguments,
)

__all__ = [
    "ARCHITECTURES", "InputNormalization", "LoadReport", "PACKAGE_WEIGHTS", "SegOutput",
    "SemiSegDefect", "SmpSegmentationModel", "TimmEncoder", "atrous_rates", "count_parameters",
    "create_model", "decoder_parameters", "load_pretrained", "read_state_dict", "smp_arguments",
]
