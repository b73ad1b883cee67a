"""``multibox.Detector``: run a detector on images in a few lines.

.. code-block:: python

    from multibox import Detector

    det = Detector.from_pretrained("face-res10-300")          # a zoo name (converted once, then cached)
    det = Detector.from_file("runs/x/best.safetensors")        # a bundle, or a multibox training checkpoint
    dets = det("photo.jpg", conf=0.5)                          # one image -> one Detections
    many = det(["a.jpg", pil_image, rgb_array, chw_tensor])    # a list -> a list of Detections
    dets = det(frame_bgr, bgr=True)                            # an OpenCV (BGR) array

Inputs: a path, a PIL image, a NumPy ``[H, W, 3]`` uint8 array (RGB unless ``bgr=True``) or a tensor ``[3, H, W]``
(RGB, 0-255). Pre-processing follows the detector's declared :class:`~multibox.models.spec.InputSpec` (resize to
``image_size`` as :class:`~multibox.data.transforms.EvalTransform` does, channel order, mean/std); inference runs
batched under ``torch.inference_mode``; results are :class:`~multibox.detections.Detections` with ``xyxy`` boxes in
pixels of each original image and the class names attached.

Speed (``backend``, ``optimize``): the default ``backend="auto"`` runs the network on ONNX Runtime on the CPU
(exported once per batch size with :mod:`multibox.export.onnx`; the fastest CPU path on both zoo detectors, see
``multibox bench zoo``) when ``onnx`` and ``onnxruntime`` are installed, else with PyTorch; ``backend="torch"``
always uses PyTorch, ``backend="onnxruntime"`` insists on ONNX Runtime. On the PyTorch side, ``optimize="auto"``
(default) traces the network with ``torch.jit.trace`` and freezes it (once per batch size), on CPU in
``channels_last`` memory format; ``"none"`` runs eagerly (and so does ``backend="auto"``: no ONNX Runtime either).
Every optimized path is checked on the first batch of each size against eager PyTorch (outputs equal within 1e-4
relative), else the next one is tried, down to eager mode. On ONNX Runtime the decoding and NMS run in the same
graph (:mod:`multibox.export.onnx_postprocess`) once, per score threshold, their detections have matched the
PyTorch post-processing's on a batch.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from .detections import Detections

if TYPE_CHECKING:
    from .interop.bundle import DetectorBundle
    from .models.spec import InputSpec

__all__ = ["Detector", "load_detector_bundle", "to_rgb_array"]

Optimize = Literal["auto", "jit", "jit+channels_last", "channels_last", "none"]
_OPTIMIZE = ("auto", "jit", "jit+channels_last", "channels_last", "none")
Backend = Literal["auto", "torch", "onnxruntime"]
_BACKENDS = ("auto", "torch", "onnxruntime")
# an optimized network: input [B, 3, h, w] -> (cls_logits, box_deltas) (a traced module or an ONNX Runtime session)
Network = Callable[[Tensor], Any]
# traced outputs must equal eager ones to this relative tolerance (of the largest magnitude) to be used
_TRACE_RTOL = 1e-4


def to_rgb_array(image: Any, bgr: bool = False) -> np.ndarray | Tensor:  # noqa: ANN401
    """One image input as ``[H, W, 3]`` uint8 RGB array or a ``[3, H, W]`` RGB tensor (0-255).

    ``image``: a path (decoded EXIF-aware with :func:`multibox.data.image_io.load_image`) or a PIL image (both
    always read as RGB), an ``[H, W, 3]`` uint8 array (BGR when ``bgr=True``, as OpenCV gives) or a ``[3, H, W]``
    tensor (RGB 0-255, uint8 or float; BGR when ``bgr=True``). Raises ``ValueError`` for other shapes or types, and
    :class:`~multibox.data.image_io.ImageDecodeError` (naming the file) for unreadable files.
    """
    if isinstance(image, str | os.PathLike):
        from .data.image_io import load_image

        return load_image(image)  # files are decoded as RGB: bgr only concerns arrays and tensors
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an [H, W, 3] array, got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 [H, W, 3] array (0-255), got dtype {image.dtype}")
        return np.ascontiguousarray(image[..., ::-1]) if bgr else image
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a [3, H, W] tensor (RGB, 0-255), got shape {tuple(image.shape)}")
        t = image.detach().cpu()
        return t.flip(0) if bgr else t
    try:
        from PIL import Image as PILImage
    except ImportError:  # pragma: no cover - pillow is a dependency
        PILImage = None  # noqa: N806
    if PILImage is not None and isinstance(image, PILImage.Image):
        from .data.image_io import to_rgb

        return np.asarray(to_rgb(image), dtype=np.uint8)
    raise ValueError(f"unsupported image input of type {type(image).__name__}: give a path, a PIL image, an "
                     "[H, W, 3] uint8 array or a [3, H, W] tensor")


def _outputs(out: Any) -> tuple[Tensor, Tensor]:  # noqa: ANN401
    if hasattr(out, "cls_logits"):
        return out.cls_logits, out.box_deltas
    if isinstance(out, tuple | list) and len(out) == 2:
        return out[0], out[1]
    raise TypeError(f"the network must return (cls_logits, box_deltas), got {type(out).__name__}")


class _TupleOutput(nn.Module):
    """Wraps a network so that it returns a plain ``(cls_logits, box_deltas)`` tuple (for tracing)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return _outputs(self.model(x))


def _close(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> bool:
    """Equal shapes and values within ``_TRACE_RTOL`` of the largest magnitude (at least 1)."""
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape:
            return False
        if y.numel() and float((x.float() - y.float()).abs().max()) > _TRACE_RTOL * max(float(y.abs().max()), 1.0):
            return False
    return True


class Detector:
    """A ready detector: network, priors, input contract, class names and post-processing.

    Args:
        bundle: a :class:`~multibox.interop.bundle.DetectorBundle` (see :meth:`from_pretrained`,
            :meth:`from_file`).
        device: where the network runs (``"cpu"``, ``"cuda"``, ...).
        conf: default score threshold of :meth:`__call__` (``None``: the bundle's post-processing threshold).
        batch_size: images per forward pass.
        optimize: the PyTorch path: ``"auto"`` (trace + freeze, channels_last on CPU; checked against eager
            mode), ``"jit"``, ``"jit+channels_last"``, ``"channels_last"`` or ``"none"`` (eager).
        backend: ``"auto"`` (ONNX Runtime on CPU when installed and ``optimize="auto"``, else PyTorch),
            ``"torch"`` or ``"onnxruntime"`` (CPU only; raises :class:`~multibox.export.onnx.OnnxUnavailable`
            when ``onnx`` / ``onnxruntime`` are missing).
        postprocess: overrides of the bundle's post-processing settings (``nms_threshold``, ``keep_top_k``, ...).

    Attributes: ``class_names`` (background first), ``input_spec``, ``name``, ``bundle``, ``device``.
    """

    def __init__(self, bundle: DetectorBundle, device: str | torch.device = "cpu", *, conf: float | None = None,
                 batch_size: int = 8, optimize: Optimize = "auto", backend: Backend = "auto",
                 postprocess: dict[str, Any] | None = None, name: str | None = None) -> None:
        if optimize not in _OPTIMIZE:
            raise ValueError(f"optimize must be one of {_OPTIMIZE}, got {optimize!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.bundle = bundle
        self.device = torch.device(device)
        self.model = bundle.model.to(self.device).eval()
        self.input_spec: InputSpec = bundle.input_spec
        self.class_names = list(bundle.class_names)
        self.conf = conf
        self.batch_size = int(batch_size)
        self.optimize: Optimize = optimize
        self.backend: Backend = backend
        if backend == "onnxruntime":
            if self.device.type != "cpu":
                raise ValueError(f"backend='onnxruntime' runs on the CPU only, not {self.device}")
            from .export.onnx import require

            require("onnx")
            require("onnxruntime")
        self.name = name or str(bundle.source.get("name", "detector"))
        self._post_overrides = dict(postprocess or {})
        self._postprocess: dict[float | None, nn.Module] = {}
        self._compiled: dict[int, Network | None] = {}  # batch size -> optimized network (None: use eager)
        self._onnx: dict[int, bytes] = {}  # batch size -> the exported network (onnxruntime path)
        self._fused: dict[int, Any] = {}  # batch size -> ONNX Runtime session of network + post-processing, or None
        self._fused_ok: dict[tuple[int, float], bool] = {}  # (batch size, threshold) -> checked against PyTorch
        self._strategy: str | None = None  # chosen on the first batch: "onnxruntime", "jit+channels_last", ...
        self._mean = torch.tensor(self.input_spec.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.input_spec.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._post(conf)  # built now: it imports torchvision (about 1.7 s the first time in a process), not at the
        # first detection

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, name: str, device: str | torch.device = "cpu", **kwargs: Any) -> Detector:
        """A zoo detector by name (see ``multibox zoo list``): converted on first use and cached as a bundle.

        Raises :class:`~multibox.interop.zoo.ZooUnavailable` saying what to fetch when the original files are
        neither cached nor downloadable.
        """
        from .interop.zoo import load_zoo_bundle

        return cls(load_zoo_bundle(name), device, name=name, **kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str | torch.device = "cpu", **kwargs: Any) -> Detector:
        """A detector bundle (``.safetensors`` written by ``save_bundle``) or a multibox training checkpoint
        (``.safetensors`` weights or ``.pt``, read with :func:`multibox.engine.checkpoint.load_model`)."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such detector file")
        return cls(load_detector_bundle(p), device, name=p.stem, **kwargs)

    @classmethod
    def from_model(cls, model: nn.Module, device: str | torch.device = "cpu", **kwargs: Any) -> Detector:
        """A detector from a multibox :class:`~multibox.models.SSD` (its priors, input spec, box coder and names)."""
        return cls(_bundle_from_ssd(model), device, **kwargs)

    # ----------------------------------------------------------------------------------------------- running
    def __repr__(self) -> str:
        h, w = self.input_spec.image_size
        return (f"Detector({self.name!r}, input {w}x{h} {self.input_spec.channel_order}, "
                f"{len(self.class_names) - 1} classes, device={self.device})")

    def _post(self, conf: float | None) -> nn.Module:
        """The post-processing for score threshold ``conf`` (the bundle's own threshold when lower or ``None``)."""
        key = None if conf is None else float(conf)
        if key not in self._postprocess:
            kwargs = dict(self._post_overrides)
            base = float({**self.bundle.postprocess, **kwargs}.get("conf_threshold", 0.01))
            if key is not None and key > base:
                # PostProcess keeps float32 scores > threshold: the float32 just below conf keeps scores >= conf
                kwargs["conf_threshold"] = float(np.nextafter(np.float32(key), np.float32(-np.inf)))
            self._postprocess[key] = _make_postprocess(self.bundle, kwargs).to(self.device)
        return self._postprocess[key]

    def preprocess(self, images: Sequence[np.ndarray | Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """RGB images (``[H, W, 3]`` uint8 arrays or ``[3, H, W]`` tensors) -> ``([B, 3, h, w]`` network input on
        ``device``, original ``(H, W)`` per image)``, resized and normalized as ``input_spec`` says."""
        import torch.nn.functional as F

        from .data.transforms import as_uint8_chw

        h, w = self.input_spec.image_size
        batch, sizes = [], []
        for img in images:
            t = as_uint8_chw(img) if isinstance(img, np.ndarray) else img
            sizes.append((int(t.shape[-2]), int(t.shape[-1])))
            t = t.to(self.device, non_blocking=True).float()[None]
            # bilinear, align_corners=False, no antialiasing: EvalTransform's resize (torchvision's SSD transform)
            batch.append(t if tuple(t.shape[-2:]) == (h, w) else F.interpolate(t, size=(h, w), mode="bilinear",
                                                                               align_corners=False))
        x = torch.cat(batch)
        if self.input_spec.channel_order == "BGR":
            x = x.flip(1)
        return (x - self._mean) / self._std, sizes

    def _eager(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return _outputs(self.model(x))

    def _strategies(self) -> list[str]:
        """Network paths in order of preference (the first whose outputs equal eager mode's is used)."""
        if self.backend == "onnxruntime":
            return ["onnxruntime"]
        if self.optimize == "none":
            return ["eager"]
        torch_paths = {"jit": ["jit"], "jit+channels_last": ["jit+channels_last"],
                       "channels_last": ["channels_last"]}.get(self.optimize)
        if torch_paths is None:  # optimize="auto"
            # measured on the zoo's face and person SSDs (bench zoo): trace + freeze in channels_last is the
            # fastest PyTorch CPU path; ONNX Runtime is faster still
            torch_paths = ["jit+channels_last", "jit"] if self.device.type == "cpu" else ["jit"]
            if self.backend == "auto" and self.device.type == "cpu":
                from .export.onnx import onnxruntime_available

                if onnxruntime_available():
                    torch_paths = ["onnxruntime", *torch_paths]
        return [*torch_paths, "eager"]

    def _build(self, x: Tensor, strategy: str) -> Network:
        if strategy == "onnxruntime":
            from .export.onnx import OnnxRuntimeNetwork, export_onnx_bytes

            self._onnx[int(x.shape[0])] = data = export_onnx_bytes(self.model, x)
            return OnnxRuntimeNetwork(data)
        if "channels_last" in strategy:
            import copy

            wrapper: nn.Module = _ChannelsLast(copy.deepcopy(self.model))
        else:
            wrapper = _TupleOutput(self.model)
        if not strategy.startswith("jit"):
            return wrapper.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapper.eval(), x, check_trace=False)
            return torch.jit.freeze(traced.eval())

    def _choose(self, x: Tensor) -> Network | None:
        """The optimized network for ``x``'s batch size (``None``: run eagerly), built on first use: the first
        path of :meth:`_strategies` whose outputs equal eager mode's (within 1e-4 relative) on this batch."""
        b = int(x.shape[0])
        if b in self._compiled:
            return self._compiled[b]
        strategies = self._strategies() if self._strategy is None else [self._strategy, "eager"]
        ref = self._eager(x)
        chosen: tuple[str, Network | None] = ("eager", None)
        for strategy in strategies:
            if strategy == "eager":
                break
            try:
                mod = self._build(x, strategy)
                if _close(_outputs(mod(x)), ref):
                    chosen = (strategy, mod)
                    break
                problem = f"the {strategy} network gives other outputs than eager mode"
            except Exception as e:  # an optimization must never fail a detection
                problem = f"the {strategy} network is unavailable ({type(e).__name__}: {e})"
            if self.backend == "onnxruntime":
                raise RuntimeError(f"{self.name}: {problem}")
            warnings.warn(f"{self.name}: {problem}; not used", stacklevel=4)
        self._strategy, self._compiled[b] = chosen
        return chosen[1]

    @property
    def strategy(self) -> str:
        """The network path in use: ``"onnxruntime"``, ``"jit+channels_last"``, ``"jit"``, ``"channels_last"``,
        ``"eager"`` or ``"undecided"`` (before the first batch)."""
        if self.optimize == "none" and self.backend != "onnxruntime":
            return "eager"
        return "undecided" if self._strategy is None else self._strategy

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Network input ``[B, 3, h, w]`` -> ``(cls_logits [B, P, C], box_deltas [B, P, 4])`` (optimized path)."""
        with torch.inference_mode():
            if self.optimize == "none" and self.backend != "onnxruntime":
                return self._eager(x)
            mod = self._choose(x)
            return self._eager(x) if mod is None else _outputs(mod(x))

    def __call__(self, images: Any, conf: float | None = None, *, bgr: bool = False  # noqa: ANN401
                 ) -> Detections | list[Detections]:
        """Detect objects in one image or a list of images.

        Args:
            images: one image or a list/tuple of images; each a path, a PIL image, an ``[H, W, 3]`` uint8 array
                (RGB, or BGR with ``bgr=True``) or a ``[3, H, W]`` tensor (RGB 0-255).
            conf: keep detections with ``score >= conf`` (default: the detector's ``conf``, else the bundle's
                post-processing threshold).
            bgr: the arrays / tensors given are in BGR order (OpenCV); files are always decoded as RGB.

        Returns:
            one :class:`Detections` for a single image, a list for a list: boxes ``[N, 4]`` ``xyxy`` float32 in
            pixels of each original image, scores ``[N]``, labels ``[N]`` (background excluded), ``class_names``.
        """
        single = not isinstance(images, list | tuple)
        items = [images] if single else list(images)
        arrays = [to_rgb_array(im, bgr=bgr) for im in items]
        results = self.detect_arrays(arrays, conf)
        return results[0] if single else results

    @contextlib.contextmanager
    def _torch_threads(self) -> Iterator[None]:
        """With ONNX Runtime running the network, PyTorch's pre- and post-processing use one thread: its idle
        OpenMP workers would otherwise spin on the cores that ONNX Runtime's threads need (measured on the zoo's
        person SSD: 18.6 -> 13.1 ms per image end to end, 2 cores)."""
        if self._strategy != "onnxruntime" or torch.get_num_threads() == 1:
            yield
            return
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(n)

    def detect_arrays(self, images: Sequence[np.ndarray | Tensor], conf: float | None = None) -> list[Detections]:
        """RGB ``[H, W, 3]`` uint8 arrays or ``[3, H, W]`` tensors -> one :class:`Detections` each (on CPU)."""
        conf = self.conf if conf is None else conf
        post = self._post(conf)
        out: list[Detections] = []
        with torch.inference_mode(), self._torch_threads():
            for i in range(0, len(images), self.batch_size):
                x, sizes = self.preprocess(images[i:i + self.batch_size])
                fused = self._fused_session(x, post)
                if fused is not None:
                    dets = self._run_fused(fused, x, post.conf_threshold, sizes)
                else:
                    cls_logits, box_deltas = self.forward(x)
                    dets = post(cls_logits, box_deltas, sizes)
                out.extend(d.filter(conf).cpu() if conf is not None else d.cpu() for d in dets)
        return out

    def _fused_session(self, x: Tensor, post: nn.Module) -> Any:  # noqa: ANN401
        """On the onnxruntime path: an ONNX Runtime session running network + post-processing in one graph
        (:mod:`multibox.export.onnx_postprocess`, the score threshold a graph input) for ``x``'s batch size, used
        for ``post``'s threshold once, on a batch, its detections equal ``post``'s on the eager outputs (same
        counts and labels, scores and normalized boxes within 1e-5); else ``None`` (post-processing in PyTorch).
        The check is per threshold: scores within rounding of a threshold could otherwise come out differently."""
        b = int(x.shape[0])
        if self.optimize == "none" and self.backend != "onnxruntime":
            return None
        if b not in self._fused:
            self._choose(x)
            session = None
            if self._strategy == "onnxruntime" and b in self._onnx and post.keep_top_k > 0:
                try:
                    session = self._build_fused(self._onnx[b], post)
                except Exception as e:  # an optimization must never fail a detection
                    warnings.warn(f"{self.name}: ONNX post-processing unavailable ({type(e).__name__}: {e})",
                                  stacklevel=3)
            self._fused[b] = session
        session = self._fused[b]
        key = (b, float(post.conf_threshold))
        if session is not None and key not in self._fused_ok:
            ref = post.forward_padded(*self._eager(x))
            self._fused_ok[key] = _same_padded(self._run_fused_padded(session, x, post.conf_threshold), ref)
            if not self._fused_ok[key]:
                warnings.warn(f"{self.name}: the ONNX post-processing gives other detections than PyTorch's at "
                              f"threshold {post.conf_threshold:g}; not used for it", stacklevel=3)
        return session if session is not None and self._fused_ok[key] else None

    def _build_fused(self, network: bytes, post: nn.Module) -> Any:  # noqa: ANN401
        from .export.onnx import ort_session, require
        from .export.onnx_postprocess import append_postprocess, postprocess_graph_from

        graph = append_postprocess(require("onnx").load_from_string(network),
                                   postprocess_graph_from(post, len(self.class_names), conf_input=True))
        return ort_session(graph.SerializeToString())

    @staticmethod
    def _run_fused_padded(session: Any, x: Tensor, conf_threshold: float) -> Any:  # noqa: ANN401
        from .postprocess import PaddedDetections

        boxes, scores, labels, num = session.run(None, {
            "images": np.ascontiguousarray(x.detach().cpu().float().numpy()),
            "conf_threshold": np.asarray([conf_threshold], dtype=np.float32)})
        valid = np.arange(scores.shape[1])[None, :] < num[:, None]
        return PaddedDetections(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels),
                                torch.from_numpy(valid))

    def _run_fused(self, session: Any, x: Tensor, conf_threshold: float,  # noqa: ANN401
                   sizes: list[tuple[int, int]]) -> list[Detections]:
        """Detections from the fused graph: normalized boxes scaled to each image's pixels."""
        from .postprocess import split_padded

        padded = self._run_fused_padded(session, x, conf_threshold)
        scale = torch.tensor([[w, h, w, h] for h, w in sizes], dtype=torch.float32)
        padded = padded._replace(boxes=padded.boxes * scale[:, None, :])
        return split_padded(padded, sizes, self.class_names)


def _same_padded(a: Any, b: Any, tol: float = 1e-5) -> bool:  # noqa: ANN401
    """The same detections in two ``PaddedDetections``: per image the same number, and each entry of ``a`` matched
    to its own entry of ``b`` with the same label, score and box within ``tol`` (in any order: equal scores may be
    ranked differently)."""
    if not torch.equal(a.valid.sum(1), b.valid.sum(1)):
        return False
    for i in range(a.valid.shape[0]):
        sa, sb = a.scores[i][a.valid[i]], b.scores[i][b.valid[i]]
        la, lb = a.labels[i][a.valid[i]], b.labels[i][b.valid[i]]
        ba, bb = a.boxes[i][a.valid[i]], b.boxes[i][b.valid[i]]
        close = ((la[:, None] == lb[None, :]) & ((sa[:, None] - sb[None, :]).abs() <= tol)
                 & ((ba[:, None, :] - bb[None, :, :]).abs().amax(-1) <= tol))
        used = torch.zeros(len(sb), dtype=torch.bool)
        for row in close:
            free = (row & ~used).nonzero()
            if len(free) == 0:
                return False
            used[free[0, 0]] = True
    return True


class _ChannelsLast(nn.Module):
    """Runs ``model`` on a ``channels_last`` copy of the input (weights converted once)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        cls_logits, box_deltas = _outputs(self.model(x.contiguous(memory_format=torch.channels_last)))
        return cls_logits.contiguous(), box_deltas.contiguous()


def _make_postprocess(bundle: DetectorBundle, overrides: dict[str, Any]) -> nn.Module:
    """``bundle.make_postprocess(**overrides)``, with a clear error where the installed post-processing lacks a
    scoring mode the bundle asks for (``score="sigmoid"``)."""
    import inspect

    from .postprocess import PostProcess

    settings = {**bundle.postprocess, **overrides}
    score = settings.get("score", "softmax")
    if "score" in settings and "score" not in inspect.signature(PostProcess).parameters:
        if score != "softmax":
            raise ValueError(f"this detector needs score={score!r} post-processing, which this multibox's "
                             "PostProcess does not support")
        overrides = {**overrides}
        bundle = _without_score(bundle)
    return bundle.make_postprocess(**overrides)


def _without_score(bundle: DetectorBundle) -> DetectorBundle:
    import dataclasses

    return dataclasses.replace(bundle, postprocess={k: v for k, v in bundle.postprocess.items() if k != "score"})


def _bundle_from_ssd(model: nn.Module) -> DetectorBundle:
    from .interop.bundle import DetectorBundle

    for attr in ("priors", "input_spec", "class_names", "prior_config"):
        if not hasattr(model, attr):
            raise TypeError(f"{type(model).__name__} is not a multibox SSD (no {attr!r})")
    return DetectorBundle(model=model.eval(), priors=model.priors, input_spec=model.input_spec,
                          class_names=list(model.class_names), builder="multibox", spec={},
                          variances=tuple(model.prior_config.variances))


def load_detector_bundle(path: str | os.PathLike, map_location: str = "cpu") -> DetectorBundle:
    """A :class:`~multibox.interop.bundle.DetectorBundle` from a bundle file or from a multibox training
    checkpoint (``.safetensors`` weights or ``.pt``; default post-processing)."""
    from .interop.bundle import BUNDLE_FORMAT, load_bundle

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such detector file")
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{p}: not a readable safetensors file ({e})") from None
        if meta.get("format") == BUNDLE_FORMAT:
            return load_bundle(p, map_location)
    elif p.suffix != ".pt":
        raise ValueError(f"{p}: expected a detector bundle or checkpoint (.safetensors or .pt)")
    from .weights_io import load_model

    return _bundle_from_ssd(load_model(p, map_location=map_location))
