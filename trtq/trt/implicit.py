"""TensorRT 8.6–10.x implicit INT8: the FP32 network, ``BuilderFlag.INT8`` and a calibrator.

TensorRT 11 removed everything used here (the flag, ``int8_calibrator``, the calibration
profile, per-layer precision constraints and the calibrator classes); the builder refuses
implicit mode on 11.x before this module is touched.

With ``calibrator.source: trtq`` the calibrator offers trtq's cache (ranges from whichever
method the job chose) and serves no batches: if TensorRT asks for batches anyway it rejected
the cache (its header names another TensorRT version or algorithm), and the build stops with
that message rather than silently using TensorRT's own ranges. trtq's cache holds every FP32
tensor of the ONNX graph; the network's tensors it still lacks (layers the ONNX parser adds,
such as ``ONNXTRT_Broadcast_*``) are listed in :attr:`ImplicitSetup.without_scale` for the
report. With ``source: tensorrt`` TensorRT calibrates itself on the streamed batches and its
cache is written beside the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import BackendError
from .calibrators import calibrator_class
from .feeder import CalibrationFeeder


def network_tensors(trt, network) -> list[str]:
    """The network's FP32 tensors (inputs and every layer's outputs), in order: those implicit
    INT8 needs a scale for. A tensor without one runs in a non-INT8 kernel (TensorRT logs
    "Missing scale and zero-point for tensor ...")."""
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        tensors += [layer.get_output(j) for j in range(layer.num_outputs)]
    return list({t.name: None for t in tensors if t.dtype == trt.float32})


@dataclass
class ImplicitSetup:
    feeder: CalibrationFeeder
    kind: str  # 'entropy' or 'minmax'
    calibration_shapes: dict[str, tuple[int, ...]]
    keep_fp32: tuple[str, ...] = ()  # ONNX node names that must not run in INT8
    cache_header: str = ""
    cache_tensors: frozenset[str] = frozenset()  # the tensors trtq's cache has a scale for
    without_scale: list[str] = field(default_factory=list)  # FP32 network tensors the cache lacks (after apply)

    def apply(self, trt, builder, network, config, shapes: dict[str, tuple[int, ...]]) -> None:
        config.set_flag(trt.BuilderFlag.INT8)
        if self.feeder.cache_only:
            self.without_scale = [t for t in network_tensors(trt, network) if t not in self.cache_tensors]
        self.calibrator = calibrator_class(trt, self.kind)(self.feeder)
        config.int8_calibrator = self.calibrator
        if any(-1 in s for s in shapes.values()):
            profile = builder.create_optimization_profile()
            for name, shape in self.calibration_shapes.items():
                profile.set_shape(name, shape, shape, shape)
            config.set_calibration_profile(profile)
        if self.keep_fp32:
            wanted = set(self.keep_fp32)
            for i in range(network.num_layers):
                layer = network.get_layer(i)
                if layer.name in wanted:
                    layer.precision = trt.float32
                    for j in range(layer.num_outputs):
                        layer.set_output_type(j, trt.float32)
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)

    def check_cache_taken(self) -> None:
        if self.feeder.cache_rejected:
            raise BackendError(f"TensorRT ignored trtq's calibration cache (header '{self.cache_header}') and asked for "
                               "batches; set calibrator.cache_version to this TensorRT's version number, or "
                               "calibrator.source: tensorrt to let TensorRT calibrate")
