"""``multibox.Detector``: run a detector on images in a few lines.

.. code-block:: python

    from multibox import Detector

    det = Detector.from_pretrained("face-res10-300")          # a zoo name (converted once, then cached)
    det = Detector.from_file("runs/x/best.safetensors")        # a bundle, or a multibox training checkpoint
    dets = det("photo.jpg", conf=0.5)                          # one image -> one Detections
    many = det(["a.jpg", pil_image, rgb_array, chw_tensor])    # a list -> a list of Detections
    dets = det(frame_bgr, bgr=True)                            # an OpenCV (BGR) array
    dets = det("ortho.tif", tile=400, overlap=0.25)            # a large photo in tiles (detect_tiled)
    for name, dets in det.predict("photos/*.jpg"):             # files, folders, globs, videos
        print(name, len(dets))
    for box in dets:                                           # one record per box
        print(box.class_name, box.score, box.xyxy)

Inputs: a path, a PIL image, an ``[H, W, 3]`` array or a ``[3, H, W]`` tensor (RGB unless ``bgr=True``).
Pixel values: **uint8 is 0-255; float arrays and tensors must be in [0, 1]** (they are scaled by 255); a float
image outside [0, 1] (say 0-255 floats) is a ``ValueError`` saying how to convert it: nothing is guessed.
Pre-processing is :func:`multibox.data.transforms.preprocess` (resize to the declared
:class:`~multibox.models.spec.InputSpec`'s ``image_size``, channel order, mean/std), the same as ``multibox eval``;
inference runs batched under ``torch.inference_mode``; results are :class:`~multibox.detections.Detections` with
``xyxy`` boxes in pixels of each original image, **clipped to the image** (a box left with no area is dropped),
and the class names attached.

Speed (``runtime``): how the network runs is a registered :mod:`multibox.runtime` (``eager``, ``jit``,
``jit+channels_last``, ``channels_last``, ``onnxruntime``; ``multibox.runtime.list_runtimes()``). The default
``runtime="auto"`` tries, on the CPU, ONNX Runtime (when ``onnx`` and ``onnxruntime`` are installed; the fastest
CPU path on both zoo detectors, see ``multibox bench zoo``), then ``jit+channels_last``, then ``jit``; on other
devices ``jit``; always ending with eager PyTorch. Every non-eager path is built once per batch size and checked on
its first batch against eager PyTorch (outputs equal within 1e-4 relative): under ``"auto"`` a path that fails or
differs is skipped with a warning, a runtime asked for by name raises instead. On ONNX Runtime the decoding and NMS
run in the same graph (:mod:`multibox.export.onnx_postprocess`) once, per score threshold, their detections have
matched the PyTorch post-processing's on a batch. ``runtime_name`` says which path is in use.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image as PILImage
from safetensors import safe_open
from torch import Tensor, nn

from .data.image_io import load_image, to_rgb
from .data.transforms import preprocess
from .detections import Detections
from .interop.bundle import BUNDLE_FORMAT, DetectorBundle, load_bundle
from .interop.zoo import load_zoo_bundle
from .models.outputs import network_outputs
from .postprocess import PaddedDetections, PostProcess, split_padded
from .runtime.base import AUTO, EAGER, NetworkCallable, auto_runtimes, check_device, get_runtime, outputs_close
from .sources import Source, SourceItem, expand_sources, iter_source_images
from .tiling import Window, check_tiling, merge_tile_detections, tile_windows
from .tta import FUSE_IOU_THRESHOLD, fuse_detections, image_hw, tta_views, unview_boxes, view_image
from .weights_io import load_model

if TYPE_CHECKING:
    from .models.spec import InputSpec

__all__ = ["Detector", "load_detector_bundle", "to_rgb_array", "bundle_from_ssd"]

# optimized outputs must equal eager ones to this relative tolerance (of the largest magnitude) to be used
_TRACE_RTOL = 1e-4
_FLOAT_HELP = ("float images must hold values in [0, 1] (uint8 images hold 0-255); for a float image on the 0-255 "
               "scale use .astype(np.uint8) / .to(torch.uint8), or divide it by 255")


def _float_pixels(values: Tensor, what: str) -> Tensor:
    """Float pixels in [0, 1] -> float32 on the 0-255 scale; ``ValueError`` otherwise (nothing is guessed)."""
    v = values.detach().to(torch.float32)
    if v.numel():
        lo, hi = float(v.min()), float(v.max())
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
            raise ValueError(f"{what}: values range from {lo:g} to {hi:g}; {_FLOAT_HELP}")
    return v * 255.0


def to_rgb_array(image: Any, bgr: bool = False) -> np.ndarray | Tensor:  # noqa: ANN401
    """One image input as an ``[H, W, 3]`` uint8 RGB array or a ``[3, H, W]`` RGB tensor on the 0-255 scale
    (what :func:`multibox.data.transforms.preprocess` takes).

    ``image``: a path (decoded EXIF-aware with :func:`multibox.data.image_io.load_image`) or a PIL image (both
    always read as RGB); an ``[H, W, 3]`` array or a ``[3, H, W]`` tensor, BGR when ``bgr=True`` (as OpenCV
    gives). Arrays and tensors are uint8 (0-255) or float with values in [0, 1] (returned as a float32 tensor
    scaled by 255). Raises ``ValueError`` for other shapes, dtypes or float values outside [0, 1], and
    :class:`~multibox.data.image_io.ImageDecodeError` (naming the file) for unreadable files.
    """
    if isinstance(image, str | os.PathLike):
        return load_image(image)  # files are decoded as RGB: bgr only concerns arrays and tensors
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an [H, W, 3] array, got shape {image.shape}")
        if image.dtype == np.uint8:
            return np.ascontiguousarray(image[..., ::-1]) if bgr else image
        if not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"expected a uint8 (0-255) or float ([0, 1]) [H, W, 3] array, got dtype {image.dtype}")
        t = _float_pixels(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1),
                          f"a float {image.dtype} array")
        return t.flip(0) if bgr else t
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a [3, H, W] tensor (RGB), got shape {tuple(image.shape)}")
        t = image.detach().cpu()
        if t.is_floating_point():
            t = _float_pixels(t, f"a float {str(t.dtype).removeprefix('torch.')} tensor")
        elif t.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 (0-255) or float ([0, 1]) [3, H, W] tensor, got dtype {t.dtype}")
        return t.flip(0) if bgr else t
    if isinstance(image, PILImage.Image):
        return np.asarray(to_rgb(image), dtype=np.uint8)
    raise ValueError(f"unsupported image input of type {type(image).__name__}: give a path, a PIL image, an "
                     "[H, W, 3] array or a [3, H, W] tensor (uint8 0-255 or float in [0, 1])")


class Detector:
    """A ready detector: network, priors, input contract, class names and post-processing.

    Args:
        bundle: a :class:`~multibox.interop.bundle.DetectorBundle` (see :meth:`from_pretrained`,
            :meth:`from_file`, :meth:`from_model`).
        device: where the network runs (``"cpu"``, ``"cuda"``, ...).
        conf: default score threshold of :meth:`__call__` (``None``: the bundle's post-processing threshold).
        batch_size: images per forward pass.
        runtime: ``"auto"`` (default; see the module docstring) or a registered runtime name
            (:func:`multibox.runtime.list_runtimes`: ``"eager"``, ``"jit"``, ``"jit+channels_last"``,
            ``"channels_last"``, ``"onnxruntime"``). An unknown name is a ``ValueError``; a runtime that cannot
            run here raises its own clear error (``"onnxruntime"``: ``ValueError`` off the CPU,
            :class:`~multibox.export.onnx.OnnxUnavailable` without ``onnx`` / ``onnxruntime``).
        postprocess: overrides of the bundle's post-processing settings (``nms_threshold``, ``keep_top_k``, ...),
            or a ready :class:`~multibox.postprocess.PostProcess` to use as it is.
        runtime_options: options of the named ``runtime`` (:meth:`multibox.runtime.base.Runtime.configure`), e.g.
            for ``"onnxruntime-int8"`` ``{"model": "det.int8.onnx"}`` or ``{"calibrate": "photos/",
            "calib_images": 200, "method": "minmax", "keep_float": ["first"]}`` (:mod:`multibox.runtime.ort_int8`).

    Attributes: ``class_names`` (background first), ``input_spec``, ``name``, ``bundle``, ``device``,
    ``runtime`` (as asked), ``runtime_name`` (in use).
    """

    def __init__(self, bundle: DetectorBundle, device: str | torch.device = "cpu", *, conf: float | None = None,
                 batch_size: int = 8, runtime: str = AUTO, postprocess: dict[str, Any] | nn.Module | None = None,
                 name: str | None = None, runtime_options: dict[str, Any] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = check_device(device)  # "tpu", or cuda without a GPU: a ValueError naming it
        self.input_spec: InputSpec = bundle.input_spec
        self._runtime = None
        if runtime != AUTO:
            # unknown names, bad options and unusable runtimes fail here, clearly
            self._runtime = get_runtime(runtime).configure(runtime_options or {}, self.input_spec)
            self._runtime.check(self.device)
        elif runtime_options:
            raise ValueError("runtime_options need a runtime named, not 'auto'")
        self.runtime = runtime
        self.bundle = bundle
        self.model = bundle.model.to(self.device).eval()
        self.class_names = list(bundle.class_names)
        self.conf = conf
        self.batch_size = int(batch_size)
        self.name = name or str(bundle.source.get("name", "detector"))
        self._fixed_post = postprocess.to(self.device) if isinstance(postprocess, nn.Module) else None
        self._post_overrides = dict(postprocess or {}) if self._fixed_post is None else {}
        self._postprocess: dict[float | None, PostProcess] = {}
        self._networks: dict[int, NetworkCallable | None] = {}  # batch size -> network (None: eager)
        self._chosen: str | None = EAGER if runtime == EAGER else None  # decided on the first batch
        self._torch_threads_hint: int | None = None
        self._fused: dict[int, Any] = {}  # batch size -> fused network + post-processing, or None
        self._fused_ok: dict[tuple[int, float], bool] = {}  # (batch size, threshold) -> checked against PyTorch
        self.postprocess_for(conf)  # built now: it imports torchvision (about 1.7 s the first time in a process),
        # not at the first detection

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, name: str, device: str | torch.device = "cpu", **kwargs: Any) -> Detector:
        """A zoo detector by name (see ``multibox zoo list``): converted on first use and cached as a bundle.

        Raises :class:`~multibox.interop.zoo.ZooUnavailable` saying what to fetch when the original files are
        neither cached nor downloadable.
        """
        return cls(load_zoo_bundle(name), device, name=name, **kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str | torch.device = "cpu", **kwargs: Any) -> Detector:
        """A detector bundle (``.safetensors`` written by ``save_bundle``) or a multibox training checkpoint
        (``.safetensors`` weights or ``.pt``, read with :func:`multibox.weights_io.load_model`)."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such detector file")
        return cls(load_detector_bundle(p), device, name=p.stem, **kwargs)

    @classmethod
    def from_model(cls, model: nn.Module, device: str | torch.device = "cpu", **kwargs: Any) -> Detector:
        """A detector from a multibox :class:`~multibox.models.SSD` (its priors, input spec, box coder and names)."""
        return cls(bundle_from_ssd(model), device, **kwargs)

    # ----------------------------------------------------------------------------------------------- running
    def __repr__(self) -> str:
        h, w = self.input_spec.image_size
        return (f"Detector({self.name!r}, input {w}x{h} {self.input_spec.channel_order}, "
                f"{len(self.class_names) - 1} classes, device={self.device}, runtime={self.runtime!r})")

    def postprocess_for(self, conf: float | None = None) -> PostProcess:
        """The :class:`~multibox.postprocess.PostProcess` used for score threshold ``conf`` (the bundle's own
        threshold when ``conf`` is lower or ``None``; a ``postprocess`` module given to the constructor always).
        Raises ``ValueError`` for a ``conf`` outside [0, 1] (NaN included)."""
        if conf is not None and not 0.0 <= float(conf) <= 1.0:
            raise ValueError(f"conf {conf!r} is not in [0, 1] (a score threshold)")
        if self._fixed_post is not None:
            return self._fixed_post
        key = None if conf is None else float(conf)
        if key not in self._postprocess:
            kwargs = dict(self._post_overrides)
            base = float({**self.bundle.postprocess, **kwargs}.get("conf_threshold", 0.01))
            if key is not None and key > base:
                # PostProcess keeps float32 scores > threshold: the float32 just below conf keeps scores >= conf
                kwargs["conf_threshold"] = float(np.nextafter(np.float32(key), np.float32(-np.inf)))
            self._postprocess[key] = self.bundle.make_postprocess(**kwargs).to(self.device)
        return self._postprocess[key]

    def preprocess(self, images: Sequence[np.ndarray | Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """RGB images (``[H, W, 3]`` uint8 arrays or ``[3, H, W]`` tensors on the 0-255 scale) -> ``([B, 3, h, w]``
        network input on ``device``, original ``(H, W)`` per image)``: :func:`multibox.data.transforms.preprocess`
        with ``input_spec``."""
        return preprocess(images, self.input_spec, self.device)

    def _eager(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return network_outputs(self.model(x))

    def _network(self, x: Tensor) -> NetworkCallable | None:
        """The network for ``x``'s batch size (``None``: run eagerly), built on first use: the first runtime to
        try whose outputs equal eager mode's (within 1e-4 relative) on this batch."""
        b = int(x.shape[0])
        if b in self._networks:
            return self._networks[b]
        if self.runtime != AUTO:
            candidates = [self.runtime]
        elif self._chosen is not None:
            candidates = [self._chosen]
        else:
            candidates = auto_runtimes(self.device)
        ref = self._eager(x)
        chosen: tuple[str, NetworkCallable | None] = (EAGER, None)
        for name in candidates:
            if name == EAGER:
                break
            try:
                runtime = self._runtime if name == self.runtime and self._runtime is not None else get_runtime(name)
                net = runtime.build(self.model, x)
                got = network_outputs(net(x))
                if runtime.exact and outputs_close(got, ref, _TRACE_RTOL) or \
                        not runtime.exact and all(a.shape == b.shape for a, b in zip(got, ref, strict=True)):
                    chosen = (name, net)
                    break
                problem = f"the {name} network gives other outputs than eager mode"
            except Exception as e:  # under "auto" an optimization must never fail a detection
                problem = f"the {name} network is unavailable ({type(e).__name__}: {e})"
            if self.runtime != AUTO:
                raise RuntimeError(f"{self.name}: {problem} (runtime={self.runtime!r}; use runtime='auto' to fall "
                                   "back to other runtimes)")
            warnings.warn(f"{self.name}: {problem}; not used", stacklevel=4)
        self._chosen, self._networks[b] = chosen
        self._torch_threads_hint = getattr(chosen[1], "torch_threads", None)
        return chosen[1]

    @property
    def runtime_name(self) -> str:
        """The runtime in use: a registered name (``"onnxruntime"``, ``"jit+channels_last"``, ``"eager"``, ...),
        or ``"undecided"`` before the first batch under ``runtime="auto"`` (or before the first check of a named
        one)."""
        return "undecided" if self._chosen is None else self._chosen

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Network input ``[B, 3, h, w]`` -> ``(cls_logits [B, P, C], box_deltas [B, P, 4])`` (the runtime's)."""
        with torch.inference_mode():
            if self.runtime == EAGER:
                return self._eager(x)
            net = self._network(x)
            return self._eager(x) if net is None else network_outputs(net(x))

    def __call__(self, images: Any, conf: float | None = None, *, bgr: bool = False,  # noqa: ANN401
                 tile: int | None = None, overlap: float = 0.25, tta: str | None = None
                 ) -> Detections | list[Detections]:
        """Detect objects in one image or a list of images.

        Args:
            images: one image or a list/tuple of images; each a path, a PIL image, an ``[H, W, 3]`` array (RGB, or
                BGR with ``bgr=True``) or a ``[3, H, W]`` tensor; uint8 0-255 or float in [0, 1].
            conf: keep detections with ``score >= conf`` (default: the detector's ``conf``, else the bundle's
                post-processing threshold).
            bgr: the arrays / tensors given are in BGR order (OpenCV); files are always decoded as RGB.
            tile: tiled inference for large photos (see :meth:`detect_tiled`): windows of ``tile`` x ``tile``
                pixels, each detected on its own, merged by a cross-tile NMS. ``None`` (default): the whole image
                at once.
            overlap: overlap of neighbouring windows, a fraction of ``tile`` in ``[0, 1)`` (with ``tile`` only).
            tta: test-time augmentation (:mod:`multibox.tta`): ``"hflip"``, ``"flips"`` (4 views) or
                ``"dihedral"`` (8 mirrors and quarter turns, for overhead photos), or one of those ``+shift``
                (each view also shifted by 2, 4 and 6 input pixels, 4x the views); the views' detections are fused
                by weighted box fusion. ``None`` (default): the image as it is.

        Returns:
            one :class:`Detections` for a single image, a list for a list: boxes ``[N, 4]`` ``xyxy`` float32 in
            pixels of each original image (inside it), scores ``[N]``, labels ``[N]`` (background excluded),
            ``class_names``.
        """
        single = not isinstance(images, list | tuple)
        items = [images] if single else list(images)
        arrays = [to_rgb_array(im, bgr=bgr) for im in items]
        results = self.detect_arrays(arrays, conf, tile=tile, overlap=overlap, tta=tta)
        for im, dets in zip(items, results, strict=True):
            if isinstance(im, str | os.PathLike):
                dets.source = str(im)  # what Detections.plot / save draw on by default
        return results[0] if single else results

    def predict(self, source: str | os.PathLike | Sequence[str | os.PathLike], conf: float | None = None, *,
                video_stride: int = 1, tile: int | None = None, overlap: float = 0.25, tta: str | None = None
                ) -> Iterator[tuple[str, Detections]]:
        """Detect in every image a source names, lazily: yields ``(name, Detections)`` per image or video frame.

        ``source``: an image file, a folder (its images, sorted, not recursive), a glob pattern (``**`` allowed)
        or a video (every ``video_stride``-th frame, read with OpenCV), or a list of those
        (:func:`multibox.sources.expand_sources`). Names are file stems (made unique), frames
        ``<video>_f000123``. Images are read and detected ``batch_size`` at a time. ``tile`` / ``overlap``: tiled
        inference, ``tta``: test-time augmentation, as in :meth:`__call__`.
        """
        specs = [source] if isinstance(source, str | os.PathLike) else list(source)
        for item, _, dets in self.detect_sources(expand_sources([str(s) for s in specs]), conf,
                                                 video_stride=video_stride, tile=tile, overlap=overlap,
                                                 tta=tta):
            yield item.name, dets

    def detect_sources(self, sources: Sequence[Source], conf: float | None = None, *, video_stride: int = 1,
                       tile: int | None = None, overlap: float = 0.25, tta: str | None = None
                       ) -> Iterator[tuple[SourceItem, np.ndarray, Detections]]:
        """As :meth:`predict` on sources already expanded (:func:`multibox.sources.expand_sources`), yielding
        ``(item, [H, W, 3] uint8 RGB image, Detections)``: what ``multibox detect`` writes from. Detections of
        image files carry the file as ``source``. With ``tile``, images are gathered until their windows fill a
        batch."""
        if tile is not None:
            tile, overlap = check_tiling(tile, overlap)
        n_views = 1 if tta is None else len(tta_views(tta))
        batch: list[tuple[SourceItem, np.ndarray]] = []
        filled = 0  # network inputs in the batch: images, or windows when tiled
        for item, image in iter_source_images(sources, video_stride):
            batch.append((item, image))
            filled += n_views * (1 if tile is None else len(tile_windows(image.shape[0], image.shape[1], tile,
                                                                         overlap)))
            if filled >= self.batch_size:
                yield from self._detect_batch(batch, conf, tile, overlap, tta)
                batch, filled = [], 0
        if batch:
            yield from self._detect_batch(batch, conf, tile, overlap, tta)

    def _detect_batch(self, batch: list[tuple[SourceItem, np.ndarray]], conf: float | None, tile: int | None,
                      overlap: float, tta: str | None = None
                      ) -> Iterator[tuple[SourceItem, np.ndarray, Detections]]:
        results = self.detect_arrays([img for _, img in batch], conf, tile=tile, overlap=overlap, tta=tta)
        for (item, img), dets in zip(batch, results, strict=True):
            if not item.frame:
                dets.source = item.source
            yield item, img, dets

    @contextlib.contextmanager
    def _torch_threads(self) -> Iterator[None]:
        """PyTorch's pre- and post-processing use the thread count the chosen network asks for (ONNX Runtime: one,
        see :class:`multibox.runtime.ort.OrtNetwork`)."""
        want = self._torch_threads_hint
        n = torch.get_num_threads()
        if want is None or want >= n:
            yield
            return
        torch.set_num_threads(want)
        try:
            yield
        finally:
            torch.set_num_threads(n)

    def detect_arrays(self, images: Sequence[np.ndarray | Tensor], conf: float | None = None, *,
                      tile: int | None = None, overlap: float = 0.25, tta: str | None = None
                      ) -> list[Detections]:
        """RGB ``[H, W, 3]`` uint8 arrays or ``[3, H, W]`` tensors on the 0-255 scale -> one :class:`Detections`
        each (on CPU, boxes clipped to the image; see :func:`multibox.data.transforms.preprocess`). With
        ``tile``: :meth:`detect_tiled` on them. With ``tta``: :meth:`detect_tta`."""
        if tta is not None:
            return self.detect_tta(images, tta, conf, tile=tile, overlap=overlap)
        if tile is not None:
            return self.detect_tiled(images, tile, overlap, conf)
        conf = self.conf if conf is None else conf
        post = self.postprocess_for(conf)
        out: list[Detections] = []
        with torch.inference_mode(), self._torch_threads():
            for i in range(0, len(images), self.batch_size):
                x, sizes = self.preprocess(images[i:i + self.batch_size])
                fused = self._fused_network(x, post)
                if fused is not None:
                    dets = self._run_fused(fused, x, post.conf_threshold, sizes)
                else:
                    cls_logits, box_deltas = self.forward(x)
                    dets = post(cls_logits, box_deltas, sizes)
                out.extend((d.filter(conf) if conf is not None else d).cpu().clip() for d in dets)
        return out

    def detect_tta(self, images: Sequence[np.ndarray | Tensor], tta: str = "flips", conf: float | None = None, *,
                   tile: int | None = None, overlap: float = 0.25,
                   iou_threshold: float = FUSE_IOU_THRESHOLD) -> list[Detections]:
        """Test-time augmentation (:mod:`multibox.tta`): every image (an RGB ``[H, W, 3]`` uint8 array or
        ``[3, H, W]`` tensor, 0-255) is detected in each view of ``tta`` (``"hflip"``, ``"flips"``,
        ``"dihedral"``, or one of those ``+shift``; all views in the detector's batches, each tiled when ``tile``
        is given; shifts in pixels of the network input, see :func:`~multibox.tta.shift_pixels`), the views' boxes
        are mapped back to the image exactly and fused per class by weighted box fusion (IoU above
        ``iou_threshold`` joins a cluster). One :class:`Detections` per image: boxes ``[N, 4]`` float32 xyxy
        pixels, fused scores ``>= conf``, at most the detector's ``keep_top_k``, sorted by score.
        ``ValueError`` for an unknown mode."""
        conf = self.conf if conf is None else conf
        post = self.postprocess_for(conf)
        out: list[Detections] = []
        for mapped in self.detect_views(images, tta, conf, tile=tile, overlap=overlap):
            size = mapped[0].image_size  # every view's detections carry the original image's size
            out.append(fuse_detections(mapped, iou_threshold=iou_threshold, keep_top_k=int(post.keep_top_k),
                                       conf=conf, class_names=self.class_names, image_size=size).clip())
        return out

    def detect_views(self, images: Sequence[np.ndarray | Tensor], tta: str = "flips", conf: float | None = None, *,
                     tile: int | None = None, overlap: float = 0.25) -> list[list[Detections]]:
        """The unfused half of :meth:`detect_tta`: for every image, one :class:`Detections` per view of ``tta``
        (in :func:`~multibox.tta.tta_views` order), boxes ``[N, 4]`` float32 xyxy pixels of the *original* image
        (mapped back exactly by :func:`~multibox.tta.unview_boxes`), scores ``>= conf``. Fuse them with
        :func:`~multibox.tta.fuse_detections`, also together with other detectors' views of the same image (an
        ensemble: ``benchmarks/ensemble_trees.py``). ``ValueError`` for an unknown mode."""
        views = tta_views(tta)
        conf = self.conf if conf is None else conf
        sizes = [image_hw(image) for image in images]
        inputs = [self._seen_size(size, tile) for size in sizes]
        viewed = [view_image(image, v, seen) for image, seen in zip(images, inputs, strict=True) for v in views]
        per_view = self.detect_arrays(viewed, conf, tile=tile, overlap=overlap)
        out: list[list[Detections]] = []
        for i, (size, seen) in enumerate(zip(sizes, inputs, strict=True)):
            out.append([Detections(unview_boxes(d.boxes, v, size, seen), d.scores, d.labels, d.class_names, size)
                        for d, v in zip(per_view[i * len(views):(i + 1) * len(views)], views, strict=True)])
        return out

    def _seen_size(self, size: tuple[int, int], tile: int | None) -> tuple[float, float]:
        """``(height, width)`` that an image of ``size`` has at the network's scale: the input size, or, tiled,
        the image scaled as its ``tile``-pixel windows are (what the pixel shifts of :mod:`multibox.tta` refer
        to)."""
        ih, iw = self.input_spec.image_size
        if tile is None:
            return float(ih), float(iw)
        # a window is at most the image's side (tiling.tile_windows), and is resized to the input
        return size[0] * ih / min(tile, size[0]), size[1] * iw / min(tile, size[1])

    def detect_tiled(self, images: Sequence[np.ndarray | Tensor], tile: int = 400, overlap: float = 0.25,
                     conf: float | None = None, *, keep_top_k: int | None = None,
                     drop_cut: bool = True) -> list[Detections]:
        """Tiled inference for photos much larger than the network input (an orthophoto for a detector trained on
        400 px tiles): one :class:`Detections` per image, as :meth:`detect_arrays` gives untiled.

        Each image (an RGB ``[H, W, 3]`` uint8 array or ``[3, H, W]`` tensor on the 0-255 scale) is cut into
        the windows of :func:`multibox.tiling.tile_windows` (``tile`` x ``tile`` pixels, neighbours overlapping by
        ``overlap`` of the tile, the last ones flush with the right and bottom edges, one window for an image no
        larger than a tile). The crops of all images run through the detector's batches of ``batch_size`` (each
        crop pre-processed as any image, i.e. resized to the network input) with the ``conf`` threshold; their
        boxes shift back to pixels of the whole image and merge with
        :func:`multibox.tiling.merge_tile_detections`: boxes cut by an inner window edge that another window
        sees whole are dropped (``drop_cut``), then NMS per class at the detector's ``nms_threshold`` and the
        ``keep_top_k`` best (default: the detector's ``keep_top_k``; raise it for photos with more objects).

        Returns boxes ``[N, 4]`` float32 xyxy pixels of each whole image (inside it), scores, labels and class
        names, sorted by score. ``ValueError`` for ``tile < 1`` or ``overlap`` outside ``[0, 1)``.
        """
        tile, overlap = check_tiling(tile, overlap)
        post = self.postprocess_for(self.conf if conf is None else conf)
        crops: list[np.ndarray | Tensor] = []
        plans: list[tuple[tuple[int, int], list[Window]]] = []
        for image in images:
            chw = isinstance(image, Tensor)
            h, w = image_hw(image)
            windows = tile_windows(h, w, tile, overlap)
            plans.append(((h, w), windows))
            crops += [image[:, y0:y1, x0:x1] if chw else image[y0:y1, x0:x1] for x0, y0, x1, y1 in windows]
        per_crop = self.detect_arrays(crops, conf) if crops else []
        limit = int(post.keep_top_k) if keep_top_k is None else int(keep_top_k)
        out: list[Detections] = []
        start = 0
        for size, windows in plans:
            tiles = per_crop[start:start + len(windows)]
            start += len(windows)
            out.append(merge_tile_detections(tiles, windows, size, iou_threshold=float(post.nms_threshold),
                                             keep_top_k=limit, class_names=self.class_names, drop_cut=drop_cut))
        return out

    def _fused_network(self, x: Tensor, post: PostProcess) -> Any:  # noqa: ANN401
        """A network that also runs ``post`` (``fuse``, e.g. ONNX Runtime's graph with decoding and NMS) for
        ``x``'s batch size, used for ``post``'s threshold once, on a batch, its detections equal ``post``'s on the
        eager outputs (same counts and labels, scores and normalized boxes within 1e-5); else ``None``
        (post-processing in PyTorch). The check is per threshold: scores within rounding of a threshold could
        otherwise come out differently."""
        if self.runtime == EAGER:
            return None
        b = int(x.shape[0])
        if b not in self._fused:
            net = self._network(x)
            fused = None
            if net is not None and hasattr(net, "fuse"):
                try:
                    fused = net.fuse(post, len(self.class_names))
                except Exception as e:  # an optimization must never fail a detection
                    warnings.warn(f"{self.name}: fused post-processing unavailable ({type(e).__name__}: {e})",
                                  stacklevel=3)
            self._fused[b] = fused
        fused = self._fused[b]
        key = (b, float(post.conf_threshold))
        if fused is not None and key not in self._fused_ok:
            # an approximate (int8) runtime: the fused graph must match PyTorch's post-processing of its own outputs
            exact = self._runtime is None or self._runtime.exact
            ref = post.forward_padded(*(self._eager(x) if exact else network_outputs(self._networks[b](x))))
            self._fused_ok[key] = _same_padded(fused(x, post.conf_threshold), ref)
            if not self._fused_ok[key]:
                warnings.warn(f"{self.name}: the fused post-processing gives other detections than PyTorch's at "
                              f"threshold {post.conf_threshold:g}; not used for it", stacklevel=3)
        return fused if fused is not None and self._fused_ok[key] else None

    def _run_fused(self, fused: Any, x: Tensor, conf_threshold: float,  # noqa: ANN401
                   sizes: list[tuple[int, int]]) -> list[Detections]:
        """Detections from the fused network: normalized boxes scaled to each image's pixels."""
        padded = fused(x, conf_threshold)
        scale = torch.tensor([[w, h, w, h] for h, w in sizes], dtype=torch.float32)
        padded = padded._replace(boxes=padded.boxes * scale[:, None, :])
        return split_padded(padded, sizes, self.class_names)


def _same_padded(a: PaddedDetections, b: PaddedDetections, tol: float = 1e-5) -> bool:
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


def bundle_from_ssd(model: nn.Module) -> DetectorBundle:
    """A :class:`~multibox.interop.bundle.DetectorBundle` of a multibox SSD-like model: it needs ``priors``
    (``[P, 4]`` normalized cxcywh), ``input_spec`` and ``class_names``; the variances come from its
    ``prior_config`` or ``box_coder`` (default post-processing settings)."""
    for attr in ("priors", "input_spec", "class_names"):
        if not hasattr(model, attr):
            raise TypeError(f"{type(model).__name__} is not a multibox SSD (no {attr!r})")
    if hasattr(model, "prior_config"):
        variances = tuple(model.prior_config.variances)
    elif hasattr(model, "box_coder"):
        variances = tuple(model.box_coder.variances)
    else:
        raise TypeError(f"{type(model).__name__} is not a multibox SSD (no 'prior_config' or 'box_coder')")
    return DetectorBundle(model=model.eval(), priors=model.priors, input_spec=model.input_spec,
                          class_names=list(model.class_names), builder="multibox", spec={}, variances=variances)


def load_detector_bundle(path: str | os.PathLike, map_location: str = "cpu") -> DetectorBundle:
    """A :class:`~multibox.interop.bundle.DetectorBundle` from a bundle file or from a multibox training
    checkpoint (``.safetensors`` weights or ``.pt``; default post-processing)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such detector file")
    if p.suffix == ".safetensors":
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{p}: not a readable safetensors file ({e})") from None
        if meta.get("format") == BUNDLE_FORMAT:
            return load_bundle(p, map_location)
    elif p.suffix != ".pt":
        raise ValueError(f"{p}: expected a detector bundle or checkpoint (.safetensors or .pt)")
    return bundle_from_ssd(load_model(p, map_location=map_location))
