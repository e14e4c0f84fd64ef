"""CAM methods by the names pytorch-grad-cam users know: ``get_method("gradcam++")(activations, gradients)``.

Pure numpy, float32. Each method returns the raw map ``[N, h, w]``; :mod:`onnxcam.postprocess` turns it into the
normalised, input-sized map. The formulas are those of docs/METHODS.md. Importing this package registers
every method (one module per method or family, each calling ``register`` at import).

Methods that query the model again (:class:`ModelMethod`: Score-CAM, Ablation-CAM, occlusion, RISE, LIME,
KernelSHAP, saliency, guided backpropagation, deconvnet, guided Grad-CAM, SmoothGrad, Integrated Gradients,
KPCA-CAM, FinerCAM, Smooth Grad-CAM++, SS-CAM, IS-CAM, FullGrad, ShapleyCAM) take a :class:`MethodRequest`.
"""

from __future__ import annotations

from .ablation_cam import ablation_cam
from .base import (
    CamFunction,
    CamMethod,
    available_methods,
    channel_weighted_map,
    combine,
    first_component_projection,
    get_method,
    register,
)
from .class_activation import class_activation_map
from .eigen import eigen_cam, eigen_grad_cam
from .elementwise import grad_cam_elementwise, hires_cam, layer_cam
from .finer_cam import finer_cam
from .fullgrad import fullgrad
from .gradcam import grad_cam
from .gradcam_plusplus import grad_cam_plusplus
from .guided_gradcam import guided_gradcam
from .input_gradients import deconvnet, guided_backprop, integrated_gradients, saliency, smoothgrad
from .kpca_cam import kpca_cam
from .occlusion import occlusion
from .request import MethodRequest, ModelAccess, ModelMethod
from .rise import rise
from .score_cam import score_cam
from .shapley_cam import shapley_cam
from .smooth_gradcam_plusplus import smooth_gradcam_plusplus
from .smoothed_score_cam import is_cam, ss_cam
from .surrogate import kernel_shap, lime
from .xgradcam import xgrad_cam

__all__ = [
    "CamFunction",
    "CamMethod",
    "MethodRequest",
    "ModelAccess",
    "ModelMethod",
    "ablation_cam",
    "available_methods",
    "channel_weighted_map",
    "class_activation_map",
    "combine",
    "deconvnet",
    "eigen_cam",
    "eigen_grad_cam",
    "finer_cam",
    "first_component_projection",
    "fullgrad",
    "get_method",
    "grad_cam",
    "grad_cam_elementwise",
    "grad_cam_plusplus",
    "guided_backprop",
    "guided_gradcam",
    "hires_cam",
    "integrated_gradients",
    "is_cam",
    "kernel_shap",
    "kpca_cam",
    "layer_cam",
    "lime",
    "occlusion",
    "register",
    "rise",
    "saliency",
    "score_cam",
    "shapley_cam",
    "smooth_gradcam_plusplus",
    "smoothgrad",
    "ss_cam",
    "xgrad_cam",
]
