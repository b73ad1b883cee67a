"""Every registry finds a new entry that is only a module file in its package: adding a dataset format, a metric,
a runtime, a backbone or a model is that module and its test (docs/design.md, "Adding things")."""

import importlib
import subprocess
import sys

import pytest

CASES = {
    "format": ("multibox.data.datasets", "multibox.data.datasets.registry",
               "from multibox.data.datasets.registry import register_format\n"
               "register_format('dropin', open=lambda *a, **k: None, write=None, detect=None, description='x')\n",
               lambda: [f.name for f in importlib.import_module("multibox.data.datasets.registry").list_formats()]),
    "metric": ("multibox.metrics", "multibox.metrics.registry",
               "from multibox.metrics.registry import register_metric\n"
               "def evaluate(*a, **k): ...\n"
               "register_metric('dropin', evaluate, description='x')\n",
               lambda: importlib.import_module("multibox.metrics.registry").list_metrics()),
    "runtime": ("multibox.runtime", "multibox.runtime.base",
                "from multibox.runtime.base import Runtime, register_runtime\n"
                "class Dropin(Runtime):\n    name = 'dropin'\n    def build(self, model, example):\n"
                "        return model\n"
                "register_runtime(Dropin())\n",
                lambda: importlib.import_module("multibox.runtime.base").list_runtimes()),
    "backbone": ("multibox.models.backbones", "multibox.models.backbones.registry",
                 "from multibox.models.backbones.registry import register_backbone\n"
                 "@register_backbone('dropin')\ndef dropin():\n    '''a drop-in backbone'''\n",
                 lambda: importlib.import_module("multibox.models.backbones.registry").list_backbones()),
    "model": ("multibox.models", "multibox.models.registry",
              "from multibox.models.registry import register_model\n"
              "@register_model('dropin')\ndef dropin(num_classes, class_names=None, priors=None):\n    ...\n",
              lambda: importlib.import_module("multibox.models.registry").list_models()),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_a_module_file_in_the_package_registers_itself(kind, tmp_path, monkeypatch):
    package_name, registry_name, code, listing = CASES[kind]
    package = importlib.import_module(package_name)
    registry = importlib.import_module(registry_name)
    assert "dropin" not in listing()
    (tmp_path / "zz_dropin.py").write_text(code)
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_DISCOVERED", set())
    try:
        assert "dropin" in listing()
    finally:
        sys.modules.pop(f"{package_name}.zz_dropin", None)
        table = getattr(registry, "_REGISTRY", None) or getattr(registry, "_METRICS", None) \
            or getattr(registry, "_FORMATS", None)
        table.pop("dropin", None)


def test_registries_are_complete_in_a_fresh_process():
    """No import order is needed: each listing alone finds every built-in entry (the SSD7 backbone is defined in
    the SSD7 model's module)."""
    code = ("from multibox.models.backbones import list_backbones; print(list_backbones())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ("['inception_resnet_v2', 'inception_v4', 'mobilenet_v1', 'mobilenet_v1_keras', "
                           "'mobilenet_v2', 'resnet101', 'resnet152', 'resnet18', 'resnet34', 'resnet50', "
                           "'resnet50_nvidia', 'resnetv2_101', 'resnetv2_50', 'ssd7', 'timm', 'vgg16']")
    code = "from multibox.models import list_models; print(len(list_models()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # VGG16 x2, SSD7, MobileNet x3, Keras MobileNetV1 x2, ResNet v1 x10, NVIDIA's, ResNet v2 x2, timm x2,
    # Inception v4 x2, Inception-ResNet v2 x2
    assert int(out) == 27
