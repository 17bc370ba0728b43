"""onnxruntime-gpu on a host where its CUDA provider cannot start.

The GPU build offers ``CUDAExecutionProvider`` wherever it is installed: on a host with no
GPU, or without the CUDA 13 and cuDNN 9 libraries it was built for, a session asked for
CUDA quietly runs on the CPU. That host must be a CPU host to nightrec (the CPU's scorer
file, the top-N kernel, int8 built where it pays), not a GPU host whose every step falls
back. And the graphs nightrec builds itself must load in that runtime (1.31 reads ONNX IR
versions up to 13; the onnx package writes 14 unless told).

The real onnxruntime-gpu package runs in a child process (one ONNX Runtime per process:
it lives beside the environment, in ``.venv/onnxruntime-gpu``, where ``make env`` puts it;
``NIGHTREC_TEST_ORT_GPU`` names another folder). Skipped where it is missing, and on a
host where torch sees a GPU (the CUDA tests cover that one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_topk import small_catalog

REPO = Path(__file__).resolve().parents[1]
ORT_GPU = Path(os.environ.get("NIGHTREC_TEST_ORT_GPU", REPO / ".venv" / "onnxruntime-gpu"))

pytestmark = [
    pytest.mark.skipif(
        not (ORT_GPU / "onnxruntime" / "__init__.py").is_file(),
        reason=f"onnxruntime-gpu is not installed in {ORT_GPU} (make env puts it there)",
    ),
    pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU host: the CUDA tests cover it"),
]

CHILD = r"""
import json, logging, sys
import numpy as np
import onnxruntime as ort

logging.basicConfig(level=logging.INFO, format="LOG %(levelname)s %(name)s %(message)s")
from nightrec import ranking, score
from nightrec.config import ContractError, Fp16Config, Int8Config, cuda_in_onnxruntime

path, data = sys.argv[1], np.load(sys.argv[2])
facts = {"file": ort.__file__, "offered": ort.get_available_providers()}
facts["cuda"] = [cuda_in_onnxruntime(), cuda_in_onnxruntime()]  # probed once
facts["auto"] = score.choose_providers("auto")
try:
    score.choose_providers("cuda")
    facts["cuda_error"] = None
except ContractError as e:
    facts["cuda_error"] = str(e)
facts["int8_auto"] = Int8Config().wanted(10**6, 192)
facts["fp16_auto"] = Fp16Config().wanted()

# the scorer as `nightrec score` opens it here, against the fused graph in this runtime
hist, seen, bias = data["hist"], data["seen"], data["bias"]
sess, facts["mode"] = score.open_scorer(path, facts["auto"], "kernel", 2, 8)
facts["served_by"] = sess.get_providers()[0]
fused = ort.InferenceSession(path, providers=facts["auto"])
widths = (seen > 0).sum(1)
got = score.run_scorer(sess, hist, seen, widths, bias, 10, 10**6)
want = score.run_scorer(fused, hist, seen, widths, bias, 10, 8)
facts["same_lists"] = all(np.array_equal(a, b) for a, b in zip(got, want))

# similar items: ONNX Runtime's product (a graph nightrec builds) and the kernel
m, active = data["vectors"], data["active"]
kernel = ranking.similar_items(m, active, 5, max_cells=1 << 14, threads=2)
plain = ranking.similar_items(m, active, 5, kernel=False)
facts["similar_same"] = bool(np.array_equal(kernel[1], plain[1]))
print("FACTS " + json.dumps(facts))
"""


def test_a_gpu_build_without_a_usable_gpu_runs_nightrecs_cpu_path(tmp_path: Path) -> None:
    scorer, hist, bias = small_catalog(tmp_path)
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((600, 8)).astype(np.float32)
    active = np.ones(600, bool)
    active[0] = False
    data = tmp_path / "data.npz"
    np.savez(data, hist=hist, seen=hist, bias=bias, vectors=vectors, active=active)

    path = [str(ORT_GPU), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(scorer), str(data)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    facts = json.loads(next(x[6:] for x in child.stdout.splitlines() if x.startswith("FACTS ")))
    logs = [x for x in child.stderr.splitlines() if x.startswith("LOG ")]

    # the GPU build is the one that ran, and it offers CUDA ...
    assert Path(facts["file"]).resolve().is_relative_to(ORT_GPU.resolve())
    assert "CUDAExecutionProvider" in facts["offered"]
    # ... which cannot start here: a CPU host to nightrec, said once
    assert facts["cuda"] == [False, False]
    said = [x for x in logs if "offers CUDA, but its CUDA provider cannot start here" in x]
    assert len(said) == 1 and said[0].startswith("LOG WARNING"), logs
    # ONNX Runtime's own reason, once (here: a CUDA library it cannot load, or no device)
    assert child.stderr.count("Failed to create CUDAExecutionProvider") == 1, child.stderr
    assert facts["auto"] == ["CPUExecutionProvider"]
    assert "'cuda' asked for" in facts["cuda_error"] and "cannot start here" in facts["cuda_error"]
    assert facts["int8_auto"] is True and facts["fp16_auto"] is False  # the CPU's scorers
    # the top-N kernel serves, on the CPU, the fused graph's lists bit for bit
    assert facts["mode"] == "kernel" and facts["served_by"] == "CPUExecutionProvider"
    assert facts["same_lists"] is True
    # similar items through the graph nightrec builds (IR version the runtime reads)
    assert facts["similar_same"] is True
    assert not any("PyTorch takes the top" in x for x in logs), logs
