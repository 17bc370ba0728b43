# nightrec on the official Airflow 3 image: the nightrec wheel (not an editable install),
# torch, and the DAG files baked into /opt/airflow/dags.
#
#   docker build -t nightrec-airflow .                                     # CPU
#   docker build --build-arg NIGHTREC_ACCELERATOR=gpu -t nightrec-airflow-gpu .   # CUDA
#
# The CPU image gets the CPU build of torch and `onnxruntime`; the GPU image gets the CUDA
# build of torch and `onnxruntime-gpu` *instead of* `onnxruntime` (both in one environment
# overwrite each other's files). docker-compose.yml builds both.
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11

# --- the nightrec wheel ---------------------------------------------------------------------
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION} AS wheel
USER root
RUN mkdir -p /src /wheels && chown airflow:0 /src /wheels
USER airflow
WORKDIR /src
COPY --chown=airflow:0 pyproject.toml README.md ./
COPY --chown=airflow:0 tasks/ tasks/
COPY --chown=airflow:0 sql/ sql/
RUN pip wheel --no-cache-dir --no-deps -w /wheels . \
    && python -c "import glob, zipfile; \
names = zipfile.ZipFile(glob.glob('/wheels/nightrec-*.whl')[0]).namelist(); \
assert 'nightrec/sql/schema.sql' in names, 'SQL files missing from the wheel'; \
assert not any(n.startswith('tasks/') for n in names), 'generic top-level tasks/ in the wheel'"

# --- the runtime image ------------------------------------------------------------------------
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}
ARG AIRFLOW_VERSION
# cpu: CPU torch + onnxruntime; gpu: CUDA torch + onnxruntime-gpu
ARG NIGHTREC_ACCELERATOR=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
# PyPI's Linux torch wheel is the CUDA build; it brings the nvidia-* CUDA 13 libraries
# that onnxruntime-gpu 1.31 loads
ARG TORCH_GPU_INDEX_URL=https://pypi.org/simple
ARG ONNXRUNTIME_GPU_VERSION=1.31.1

COPY --from=wheel /wheels /tmp/wheels

# torch first, from the index of the chosen build, so that nightrec's `torch>=...` is
# already satisfied and pip never pulls the other build; apache-airflow is pinned in every
# install so that no dependency of nightrec moves Airflow itself.
RUN set -eu; \
    case "${NIGHTREC_ACCELERATOR}" in \
      cpu) pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_CPU_INDEX_URL}" \
           && pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" /tmp/wheels/nightrec-*.whl ;; \
      gpu) pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_GPU_INDEX_URL}" \
           && pip install --no-cache-dir --no-deps /tmp/wheels/nightrec-*.whl \
           && python -c "from importlib.metadata import requires; \
from packaging.requirements import Requirement; \
reqs = [Requirement(r) for r in requires('nightrec')]; \
print('\n'.join(str(r) for r in reqs if r.name != 'onnxruntime' \
and not (r.marker and 'extra' in str(r.marker))))" > /tmp/nightrec-requirements.txt \
           && pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" \
                -r /tmp/nightrec-requirements.txt "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" ;; \
      *) echo "NIGHTREC_ACCELERATOR must be cpu or gpu, not '${NIGHTREC_ACCELERATOR}'" >&2; exit 1 ;; \
    esac; \
    python -c "import importlib.metadata as md, onnxruntime as ort, nightrec, sys; \
names = {d.metadata['Name'].lower() for d in md.distributions()}; \
both = {'onnxruntime', 'onnxruntime-gpu'} <= names; \
cuda = 'CUDAExecutionProvider' in ort.get_available_providers(); \
print('nightrec', nightrec.__file__, 'onnxruntime providers', ort.get_available_providers()); \
sys.exit('onnxruntime and onnxruntime-gpu are both installed' if both else \
         'onnxruntime-gpu has no CUDA provider' if sys.argv[1] == 'gpu' and not cuda else 0)" \
      "${NIGHTREC_ACCELERATOR}"; \
    python -c "import nightrec.sql, pathlib; \
assert (pathlib.Path(nightrec.sql.__file__).parent / 'schema.sql').is_file()"; \
    if [ "${NIGHTREC_ACCELERATOR}" = gpu ]; then \
      python -c "import glob, os, nvidia; \
print('\n'.join(sorted({os.path.dirname(p) for d in nvidia.__path__ \
for p in glob.glob(d + '/**/lib*.so*', recursive=True)})))" > /tmp/nightrec-nvidia.conf; \
    fi

USER root
# onnxruntime-gpu finds the CUDA/cuDNN libraries of the nvidia-* wheels through ld.so.conf
RUN set -eu; rm -rf /tmp/wheels /tmp/nightrec-requirements.txt; \
    if [ -s /tmp/nightrec-nvidia.conf ]; then \
      mv /tmp/nightrec-nvidia.conf /etc/ld.so.conf.d/nightrec-nvidia.conf && ldconfig; \
    fi; \
    mkdir -p /opt/nightrec/var/landing /opt/nightrec/var/serving /opt/nightrec/models; \
    chown -R airflow:0 /opt/nightrec; \
    chmod -R g+rwX /opt/nightrec
USER airflow

# state lives on the volumes that docker-compose.yml mounts at these paths, never in the
# installed package; the text encoder's weights ship inside its wheel (no model hub)
ENV NIGHTREC_HOME=/opt/nightrec/var \
    NIGHTREC_MODELS_DIR=/opt/nightrec/models \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

COPY --chown=airflow:0 dags/ /opt/airflow/dags/
