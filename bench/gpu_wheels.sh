#!/usr/bin/env bash
# Here, with the package registry: what the lent GPU machine (Python 3.12, torch with
# CUDA 13, no network; ../shared/GPU.md) lacks for nightrec's GPU checks, in .wheels/
# (git-ignored), cut so that each device call carries at most 60 MiB:
#
#   .wheels/call-1 .. call-4   onnxruntime-gpu (CUDA 13 build), four 60 MiB parts
#   .wheels/call-5             its last part, polars, polars-runtime-32
#   .wheels/call-6             duckdb, pytz, and the text encoder's config and tokenizer (its
#                              weights are not carried: bench/text.py --random-model
#                              makes random ones of the same shape there)
#
# Then, back to back while the machine stays warm: calls 1-5 each carry .wheels/call-N
# with the command `true`; call 6 carries .wheels/call-6 and runs bench/gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
ORT_GPU=${ORT_GPU:-onnxruntime-gpu==1.31.1}
# the lent machine's Python; another (3.11) builds the same kit for a dry run here
PY_TARGET=${PY_TARGET:-3.12}
rm -rf .wheels && mkdir -p .wheels/dl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_TARGET" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .wheels/dl \
  "$ORT_GPU" \
  "polars==$("$PY" -c 'import importlib.metadata as m; print(m.version("polars"))')" \
  "polars-runtime-32==$("$PY" -c 'import importlib.metadata as m; print(m.version("polars-runtime-32"))')" \
  "duckdb==$("$PY" -c 'import duckdb; print(duckdb.__version__)')" \
  "pytz==$("$PY" -c 'import importlib.metadata as m; print(m.version("pytz"))')"
for n in 1 2 3 4 5 6; do mkdir -p ".wheels/call-$n"; done
ort=$(ls .wheels/dl/onnxruntime_gpu-*.whl)
(cd .wheels/dl && sha256sum "$(basename "$ort")" > ../call-6/onnxruntime_gpu.sha256)
echo "$(basename "$ort")" > .wheels/call-6/onnxruntime_gpu.name
split -b 60m -d -a 2 "$ort" .wheels/dl/ort.part-
parts=(.wheels/dl/ort.part-*)
if [ "${#parts[@]}" -gt 5 ]; then echo "onnxruntime-gpu needs ${#parts[@]} parts: more than 5" >&2; exit 1; fi
for i in "${!parts[@]}"; do mv "${parts[$i]}" ".wheels/call-$((i + 1))/"; done
mv .wheels/dl/polars*.whl .wheels/call-5/
mv .wheels/dl/duckdb-*.whl .wheels/dl/pytz-*.whl .wheels/call-6/
model=$("$PY" -c 'from nightrec.config import Settings; print(Settings.from_env().text_model_path())')
mkdir -p .wheels/call-6/text-model
for f in config.json tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json; do
  [ -f "$model/$f" ] && cp "$model/$f" .wheels/call-6/text-model/
done
rm -rf .wheels/dl "$ort"
du -sh .wheels/call-*
