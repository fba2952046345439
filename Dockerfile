# One image for every nanobatch role (worker, beat, flower, metrics, migrations, simulator).
FROM python:3.12-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY models models
COPY tasks tasks
COPY workers workers
COPY simulator simulator
COPY cli cli
RUN pip install .
RUN useradd --create-home nanobatch && mkdir -p /data && chown nanobatch /data
USER nanobatch
ENTRYPOINT ["nanobatch"]
