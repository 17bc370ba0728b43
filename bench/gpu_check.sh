#!/usr/bin/env bash
# There, on the lent GPU machine, after bench/gpu_wheels.sh's six calls (this is the last
# one's command): joins and installs the carried wheels, then runs nightrec's GPU checks
# and writes their logs to $OUT (or ./gpu-out):
#
#   1. which providers ONNX Runtime and torch see, and the device's name;
#   2. the CUDA tests: the scorer's contract on the CUDA provider (fp32 and fp16), the
#      training on CUDA (tests/test_model.py, tests/test_int8.py);
#   3. bench/text.py: the text encoder's texts/s on the GPU (MiniLM's shape, random weights);
#   4. bench/score.py --provider cuda at 100k users x 50k items, then at 1M x 100k (each its
#      own run): the torch-CUDA floor, the ONNX Runtime core in fp32 and fp16, `nightrec
#      score` end to end.
#
# SECONDS_LEFT (default 560) bounds the whole: each step gets what remains.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.log") 2>&1
start=$(date +%s)
left() { echo $(( ${SECONDS_LEFT:-560} - ($(date +%s) - start) )); }
W=.wheels
name=$(cat $W/call-6/onnxruntime_gpu.name)
cat $W/call-*/ort.part-* > "/tmp/$name"
(cd /tmp && sha256sum -c "$OLDPWD/$W/call-6/onnxruntime_gpu.sha256") || { echo "onnxruntime-gpu parts do not join"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site "/tmp/$name" $W/call-5/*.whl $W/call-6/*.whl || exit 1
ln -sfn "$PWD/tasks" /tmp/site/nightrec
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NIGHTREC_SQL_DIR=$PWD/sql
# CUDA 13 and cuDNN 9 from the nvidia-* wheels beside torch (GPU.md)
nv=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null)/nvidia
export LD_LIBRARY_PATH=$(find "$nv" -maxdepth 3 -type d -name lib 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}
cp -r $W/call-6/text-model /tmp/text-model
python3 bench/text.py --texts 16 --no-floor --random-model /tmp/text-model --workdir /tmp/tw >/dev/null 2>&1
export NIGHTREC_TEXT_MODEL=/tmp/text-model
python3 - <<'PY'
import onnxruntime as ort, torch
print("onnxruntime", ort.__version__, ort.get_available_providers())
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
from nightrec.config import cuda_in_onnxruntime  # offered and able to start: what nightrec uses
print("nightrec: ONNX Runtime's CUDA provider starts here:", cuda_in_onnxruntime())
PY
echo "== CUDA tests ($(left) s left)"
timeout $(( $(left) / 3 )) python3 -m pytest -q -p no:cacheprovider -x \
  tests/test_model.py tests/test_int8.py \
  -k "cuda or CUDA or fp16 or large_catalog or device" 2>&1 | tail -25
echo "== text encoder on the GPU ($(left) s left)"
timeout $(( $(left) / 4 )) python3 bench/text.py --texts 20000 --no-floor \
  --random-model /tmp/text-model --workdir /tmp/tw 2>&1 | grep -v "^Loading" | tail -8
# the smaller scale first, in its own run: its table comes back even where the larger one
# runs out of time
echo "== scoring, 100k x 50k, CUDA ($(left) s left)"
timeout $(( $(left) / 3 )) python3 bench/score.py --provider cuda --scales 100000:50000 \
  --sample 50000 --workdir /tmp/bs --parts floor,torch-cuda,core,core-fp16,end-to-end \
  2>&1 | grep -E "^\||RESULT|Error|error" | tail -30
echo "== scoring, 1M x 100k, CUDA ($(left) s left)"
timeout $(( $(left) - 15 )) python3 bench/score.py --provider cuda --scales 1000000:100000 \
  --sample 100000 --workdir /tmp/bs --parts floor,torch-cuda,core,core-fp16,end-to-end \
  2>&1 | grep -E "^\||RESULT|Error|error" | tail -30
echo "== done in $(( $(date +%s) - start )) s"
