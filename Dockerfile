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
COPY nanobatch nanobatch
RUN pip install .
# /data is the `images` volume in docker-compose.yml: images/ (output) and inbox/ (drop folder) start
# owned by the unprivileged user, because a new named volume copies them from the image.
RUN useradd --create-home nanobatch && mkdir -p /data/images /data/inbox && chown -R nanobatch /data
USER nanobatch
# A writable working directory: beat keeps its celerybeat-schedule file in the current directory.
WORKDIR /home/nanobatch
ENTRYPOINT ["nanobatch"]
