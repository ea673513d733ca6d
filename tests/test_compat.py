"""`import semiseg_helpers` makes the vision stack importable next to a CPU torch."""

import subprocess
import sys

from semiseg_helpers._compat import ensure_torchvision


def test_vision_stack_imports_after_the_package_in_a_fresh_interpreter():
    code = (
        "import semiseg_helpers, torch\n"
        "import torchvision, timm, segmentation_models_pytorch, pytorch_grad_cam\n"
        "from torchvision.transforms import v2\n"
        "m = timm.create_model('resnet18', pretrained=False, num_classes=2).eval()\n"
        "print(semiseg_helpers.TORCHVISION_STATE, m(torch.rand(1, 3, 32, 32)).shape[1])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    state, classes = out.stdout.split()[-2:]
    assert state in ("native", "shimmed") and classes == "2"


def test_shim_is_idempotent_and_leaves_a_loaded_torchvision_alone():
    first = ensure_torchvision()
    assert ensure_torchvision() == first
    import torchvision  # noqa: F401  (already importable here)

    assert "torchvision" in sys.modules
